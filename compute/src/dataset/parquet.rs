//! Parquet datasets, written with the `parquet` crate's column writers and read with its
//! record API (no arrow). Features and real-valued targets are `FLOAT` columns, class labels
//! `INT32`; the [`Schema`] is stored as JSON under [`SCHEMA_METADATA_KEY`]. A file without it
//! (one written elsewhere) is read with a schema given by the caller, accepting any numeric
//! column type.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use ::parquet::basic::{Compression, Repetition, Type as PhysicalType};
use ::parquet::data_type::{FloatType, Int32Type};
use ::parquet::errors::ParquetError;
use ::parquet::file::metadata::KeyValue;
use ::parquet::file::properties::WriterProperties;
use ::parquet::file::reader::{FileReader, SerializedFileReader};
use ::parquet::file::writer::SerializedFileWriter;
use ::parquet::record::Field;
use ::parquet::schema::types::Type;

use super::{Columns, Dataset, SCHEMA_METADATA_KEY, Schema, Targets, Task};
use crate::ComputeError;

const ROWS_PER_GROUP: usize = 64 * 1024;

pub(crate) fn write(dataset: &Dataset, path: &Path) -> Result<(), ComputeError> {
    let schema = dataset.schema();
    let fail = |e: ParquetError| ComputeError::Dataset {
        path: path.to_path_buf(),
        reason: format!("cannot write Parquet: {e}"),
    };
    let column = |name: &str, physical| {
        Type::primitive_type_builder(name, physical)
            .with_repetition(Repetition::REQUIRED)
            .build()
            .map(Arc::new)
    };
    let mut fields = Vec::new();
    for name in &schema.features {
        fields.push(column(name, PhysicalType::FLOAT).map_err(fail)?);
    }
    let label_type = match schema.task {
        Task::Classification { .. } => PhysicalType::INT32,
        Task::Regression => PhysicalType::FLOAT,
    };
    for name in &schema.labels {
        fields.push(column(name, label_type).map_err(fail)?);
    }
    for name in &schema.soft_labels {
        fields.push(column(name, PhysicalType::FLOAT).map_err(fail)?);
    }
    let message = Type::group_type_builder("dataset")
        .with_fields(fields)
        .build()
        .map_err(fail)?;
    let schema_json = serde_json::to_string(schema)
        .map_err(|e| ComputeError::invalid("schema", e.to_string()))?;
    let properties = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_key_value_metadata(Some(vec![KeyValue::new(
            SCHEMA_METADATA_KEY.to_owned(),
            schema_json,
        )]))
        .build();
    let file = File::create(path).map_err(|e| ComputeError::io("cannot create", path, e))?;
    let mut writer =
        SerializedFileWriter::new(file, Arc::new(message), Arc::new(properties)).map_err(fail)?;

    let rows = dataset.len();
    let mut start = 0;
    while start < rows || (rows == 0 && start == 0) {
        let end = (start + ROWS_PER_GROUP).min(rows);
        let mut group = writer.next_row_group().map_err(fail)?;
        let mut floats: Vec<Vec<f32>> = Vec::new();
        for j in 0..schema.features.len() {
            floats.push(
                dataset
                    .features()
                    .column(j)
                    .iter()
                    .skip(start)
                    .take(end - start)
                    .copied()
                    .collect(),
            );
        }
        let mut ints: Option<Vec<i32>> = None;
        match dataset.targets() {
            Targets::Classes(c) => ints = Some(c[start..end].iter().map(|&v| v as i32).collect()),
            Targets::Values(v) => {
                for j in 0..v.ncols() {
                    floats.push(
                        v.column(j)
                            .iter()
                            .skip(start)
                            .take(end - start)
                            .copied()
                            .collect(),
                    );
                }
            }
        }
        let mut soft: Vec<Vec<f32>> = Vec::new();
        if let Some(s) = dataset.soft_targets() {
            for j in 0..s.ncols() {
                soft.push(
                    s.column(j)
                        .iter()
                        .skip(start)
                        .take(end - start)
                        .copied()
                        .collect(),
                );
            }
        }
        // Column order: features, labels, soft labels, as in the message type above.
        let n_features = schema.features.len();
        let mut float_iter = floats.into_iter();
        let mut soft_iter = soft.into_iter();
        let mut index = 0;
        while let Some(mut col) = group.next_column().map_err(fail)? {
            let is_int_label = ints.is_some() && index == n_features;
            if is_int_label {
                let values = ints.take().unwrap_or_default();
                col.typed::<Int32Type>()
                    .write_batch(&values, None, None)
                    .map_err(fail)?;
            } else {
                let values = if index < n_features + schema.labels.len() {
                    float_iter.next()
                } else {
                    soft_iter.next()
                }
                .unwrap_or_default();
                col.typed::<FloatType>()
                    .write_batch(&values, None, None)
                    .map_err(fail)?;
            }
            col.close().map_err(fail)?;
            index += 1;
        }
        group.close().map_err(fail)?;
        if rows == 0 {
            break;
        }
        start = end;
    }
    let file = writer.into_inner().map_err(fail)?;
    file.sync_all()
        .map_err(|e| ComputeError::io("cannot sync", path, e))
}

pub(crate) fn read(path: &Path, schema: Option<&Schema>) -> Result<Dataset, ComputeError> {
    let malformed = |reason: String| ComputeError::Dataset {
        path: path.to_path_buf(),
        reason,
    };
    let file = File::open(path).map_err(|e| ComputeError::io("cannot open", path, e))?;
    let reader = SerializedFileReader::new(file)
        .map_err(|e| malformed(format!("not a readable Parquet file: {e}")))?;
    let schema = match schema {
        Some(s) => s.clone(),
        None => {
            let stored = reader
                .metadata()
                .file_metadata()
                .key_value_metadata()
                .and_then(|kv| kv.iter().find(|e| e.key == SCHEMA_METADATA_KEY))
                .and_then(|e| e.value.clone())
                .ok_or_else(|| {
                    malformed(format!(
                        "no {SCHEMA_METADATA_KEY:?} metadata; pass a schema naming the feature \
                         and label columns"
                    ))
                })?;
            serde_json::from_str(&stored)
                .map_err(|e| malformed(format!("stored schema does not parse: {e}")))?
        }
    };
    let mut columns = Columns::new(schema);
    let index: HashMap<String, usize> = reader
        .metadata()
        .file_metadata()
        .schema_descr()
        .root_schema()
        .get_fields()
        .iter()
        .enumerate()
        .map(|(i, f)| (f.name().to_owned(), i))
        .collect();
    if let Some(missing) = columns.schema().columns().find(|c| !index.contains_key(*c)) {
        return Err(malformed(format!("no column {missing:?}")));
    }
    let rows = reader
        .get_row_iter(None)
        .map_err(|e| malformed(e.to_string()))?;
    for (number, row) in rows.enumerate() {
        let row = row.map_err(|e| malformed(format!("row {}: {e}", number + 1)))?;
        let fields: Vec<&Field> = row.get_column_iter().map(|(_, f)| f).collect();
        columns
            .push_row(|name| {
                let field = fields[index[name]];
                match field {
                    Field::Float(v) => Ok(f64::from(*v)),
                    Field::Double(v) => Ok(*v),
                    Field::Int(v) => Ok(f64::from(*v)),
                    Field::Long(v) => Ok(*v as f64),
                    Field::Short(v) => Ok(f64::from(*v)),
                    Field::Byte(v) => Ok(f64::from(*v)),
                    Field::UInt(v) => Ok(f64::from(*v)),
                    Field::Null => Err(format!("column {name:?} is null")),
                    other => Err(format!("column {name:?} is {other}, not a number")),
                }
            })
            .map_err(|reason| malformed(format!("row {}: {reason}", number + 1)))?;
    }
    columns.finish(path)
}
