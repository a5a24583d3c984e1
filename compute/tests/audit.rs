//! The dataset audit end to end: small CSV, JSON Lines and Parquet files written to a
//! temporary folder, audited, and every count checked exactly.

use std::fs::File;
use std::io;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nexa_compute::{
    AuditError, AuditLimits, AuditPhase, AuditRequest, ColumnReport, ColumnType, DatasetFormat,
    Position, Severity, Verdict, audit, audit_with, report_metrics,
};
use parquet::basic::Compression;
use parquet::data_type::{BoolType, ByteArray, ByteArrayType, DoubleType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use sha2::{Digest, Sha256};
use tempfile::TempDir;

fn write(dir: &TempDir, name: &str, content: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, content).unwrap();
    path
}

fn request(path: &Path) -> AuditRequest {
    AuditRequest::new(path.display().to_string())
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn column<'a>(columns: &'a [ColumnReport], name: &str) -> &'a ColumnReport {
    columns.iter().find(|c| c.name == name).unwrap()
}

/// (name, type, missing) of every column, in order.
fn schema(columns: &[ColumnReport]) -> Vec<(&str, ColumnType, u64)> {
    columns
        .iter()
        .map(|c| (c.name.as_str(), c.inferred_type, c.missing))
        .collect()
}

const PEOPLE_CSV: &str = "\
id,age,score,active,species,notes
1,34,0.5,true,setosa,
2,,1.5,false,setosa,hello
3,29,2.5,TRUE,virginica,
1,34,0.5,true,setosa,
4,31,n/a,false,versicolor,note
1,34,0.5,true,setosa,
5,,,,,
";

#[test]
fn csv_counts_schema_missing_duplicates_and_classes() {
    let dir = TempDir::new().unwrap();
    let path = write(&dir, "people.csv", PEOPLE_CSV);
    let report = audit(&request(&path).label_column("species")).unwrap();

    assert_eq!(report.format, DatasetFormat::Csv);
    assert_eq!(report.path, path.display().to_string());
    assert_eq!(report.file_size, PEOPLE_CSV.len() as u64);
    assert_eq!(report.sha256, sha256_hex(PEOPLE_CSV.as_bytes()));
    assert_eq!(report.rows, 7);
    assert!(!report.truncated);
    assert_eq!(
        schema(&report.columns),
        [
            ("id", ColumnType::Integer, 0),
            ("age", ColumnType::Integer, 2),
            ("score", ColumnType::Mixed, 1),
            ("active", ColumnType::Boolean, 1),
            ("species", ColumnType::String, 1),
            ("notes", ColumnType::String, 5),
        ]
    );
    let score = column(&report.columns, "score");
    assert_eq!((score.type_counts.float, score.type_counts.string), (5, 1));
    assert!(
        score.numeric.is_none(),
        "a mixed column has no numeric summary"
    );
    assert_eq!(report.missing_values, 10);
    // Rows 4 and 6 repeat row 1.
    assert_eq!(report.duplicate_rows, 2);

    let label = report.label.as_ref().unwrap();
    assert_eq!(label.column, "species");
    assert_eq!(
        label.classes,
        [("setosa", 4), ("versicolor", 1), ("virginica", 1)]
            .map(|(k, v)| (k.to_owned(), v))
            .into()
    );
    assert_eq!((label.missing, label.other), (1, 0));
    assert_eq!(label.imbalance_ratio, 4.0);

    // id = 1, 2, 3, 1, 4, 1, 5: q1 = 1, q3 = 3.5, fences -2.75 and 7.25.
    let id = column(&report.columns, "id").numeric.as_ref().unwrap();
    assert_eq!(
        (id.count, id.min, id.max, id.q1, id.median, id.q3),
        (7, 1.0, 5.0, 1.0, 2.0, 3.5)
    );
    assert_eq!(
        (id.lower_fence, id.upper_fence, id.outliers),
        (-2.75, 7.25, 0)
    );
    assert!(id.exact);
    assert_eq!(report.outliers, 0);
}

#[test]
fn planted_outlier_is_counted() {
    let dir = TempDir::new().unwrap();
    let mut content = String::from("sensor,reading\n");
    for (i, v) in [10, 11, 12, 13, 14, 15, 16, 17, 18, 1000]
        .iter()
        .enumerate()
    {
        content.push_str(&format!("s{i},{v}\n"));
    }
    let path = write(&dir, "readings.csv", &content);
    let report = audit(&request(&path)).unwrap();

    let reading = column(&report.columns, "reading");
    assert_eq!(reading.inferred_type, ColumnType::Integer);
    let n = reading.numeric.as_ref().unwrap();
    // numpy.percentile(values, [25, 75]) == [12.25, 16.75]; IQR 4.5; fences 5.5 and 23.5.
    assert_eq!((n.q1, n.q3), (12.25, 16.75));
    assert_eq!((n.lower_fence, n.upper_fence), (5.5, 23.5));
    assert_eq!(n.outliers, 1);
    assert_eq!((n.min, n.max), (10.0, 1000.0));
    assert!((n.mean - 112.6).abs() < 1e-9);
    // numpy.std(values, ddof=1)
    assert!((n.std - 311.811_267_703_184).abs() < 1e-6, "{}", n.std);
    assert_eq!(report.outliers, 1);
    assert_eq!(column(&report.columns, "sensor").numeric, None);
}

const REVIEWS_JSONL: &str = r#"{"text": "a", "label": "pos", "score": 1, "extra": null}
{"label": "neg", "text": "b", "score": 2.5}
{"text": "a", "label": "pos", "score": 1}
{"score": 1, "label": "pos", "text": "a"}

{"text": null, "label": "neg", "score": 3, "meta": {"k": [1, 2]}}
{"text": "c", "label": "pos", "score": 4, "flag": true}
"#;

#[test]
fn jsonl_counts_schema_missing_duplicates_and_classes() {
    let dir = TempDir::new().unwrap();
    let path = write(&dir, "reviews.jsonl", REVIEWS_JSONL);
    let report = audit(&request(&path).label_column("label")).unwrap();

    assert_eq!(report.format, DatasetFormat::JsonLines);
    assert_eq!(report.sha256, sha256_hex(REVIEWS_JSONL.as_bytes()));
    assert_eq!(report.rows, 6, "the blank line is not a row");
    assert_eq!(
        schema(&report.columns),
        [
            ("text", ColumnType::String, 1),
            ("label", ColumnType::String, 0),
            ("score", ColumnType::Float, 0),
            ("extra", ColumnType::NullOnly, 6),
            ("meta", ColumnType::Nested, 5),
            ("flag", ColumnType::Boolean, 5),
        ]
    );
    assert_eq!(report.missing_values, 17);
    // Lines 3 and 4 repeat line 1: key order and an explicit null do not matter.
    assert_eq!(report.duplicate_rows, 2);
    let label = report.label.as_ref().unwrap();
    assert_eq!(
        label.classes,
        [("neg", 2), ("pos", 4)]
            .map(|(k, v)| (k.to_owned(), v))
            .into()
    );
    assert_eq!(label.imbalance_ratio, 2.0);
    let score = column(&report.columns, "score").numeric.as_ref().unwrap();
    assert_eq!(
        (score.count, score.min, score.max, score.median),
        (6, 1.0, 4.0, 1.75)
    );

    // The ndjson extension reads the same way.
    let ndjson = write(&dir, "reviews.ndjson", REVIEWS_JSONL);
    let again = audit(&request(&ndjson).label_column("label")).unwrap();
    assert_eq!(again.columns, report.columns);
}

#[test]
fn jsonl_malformed_lines_name_the_line() {
    let dir = TempDir::new().unwrap();
    let cases = [
        ("{\"a\": 1}\n[1, 2]\n", 2, "expected a JSON object"),
        ("{\"a\": 1}\n{\"a\": 2}\n{\"a\": \n", 3, "not valid JSON"),
        (
            "{\"a\": 1, \"a\": 2}\n",
            1,
            "key \"a\" appears more than once",
        ),
    ];
    for (content, line, what) in cases {
        let path = write(&dir, "bad.jsonl", content);
        let err = audit(&request(&path)).unwrap_err();
        assert!(
            matches!(&err, AuditError::Malformed { at: Position::Line(l), .. } if *l == line),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(message.contains(&format!("line {line}")), "{message}");
        assert!(message.contains(what), "{message}");
        assert!(err.is_invalid_input());
    }
}

fn write_parquet(path: &Path) {
    let schema = parse_message_type(
        "message example {
            REQUIRED INT64 id;
            OPTIONAL DOUBLE score;
            OPTIONAL BYTE_ARRAY label (UTF8);
            OPTIONAL BOOLEAN flag;
        }",
    )
    .unwrap();
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let mut writer = SerializedFileWriter::new(
        File::create(path).unwrap(),
        Arc::new(schema),
        Arc::new(props),
    )
    .unwrap();
    let mut row_group = writer.next_row_group().unwrap();

    // Rows: (1, 1.0, a, true) (2, 2.0, b, false) (3, null, a, true) (4, 4.0, null, true)
    //       (1, 1.0, a, true) (6, 100.0, b, null)
    let mut col = row_group.next_column().unwrap().unwrap();
    col.typed::<Int64Type>()
        .write_batch(&[1, 2, 3, 4, 1, 6], None, None)
        .unwrap();
    col.close().unwrap();

    let mut col = row_group.next_column().unwrap().unwrap();
    col.typed::<DoubleType>()
        .write_batch(
            &[1.0, 2.0, 4.0, 1.0, 100.0],
            Some(&[1, 1, 0, 1, 1, 1]),
            None,
        )
        .unwrap();
    col.close().unwrap();

    let mut col = row_group.next_column().unwrap().unwrap();
    let labels: Vec<ByteArray> = ["a", "b", "a", "a", "b"].map(ByteArray::from).into();
    col.typed::<ByteArrayType>()
        .write_batch(&labels, Some(&[1, 1, 1, 0, 1, 1]), None)
        .unwrap();
    col.close().unwrap();

    let mut col = row_group.next_column().unwrap().unwrap();
    col.typed::<BoolType>()
        .write_batch(
            &[true, false, true, true, true],
            Some(&[1, 1, 1, 1, 1, 0]),
            None,
        )
        .unwrap();
    col.close().unwrap();

    assert!(row_group.next_column().unwrap().is_none());
    row_group.close().unwrap();
    writer.close().unwrap();
}

#[test]
fn parquet_counts_schema_missing_duplicates_classes_and_outliers() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("example.parquet");
    write_parquet(&path);
    let bytes = std::fs::read(&path).unwrap();

    let report = audit(&request(&path).label_column("label")).unwrap();
    assert_eq!(report.format, DatasetFormat::Parquet);
    assert_eq!(report.file_size, bytes.len() as u64);
    assert_eq!(report.sha256, sha256_hex(&bytes));
    assert_eq!(report.rows, 6);
    assert_eq!(
        schema(&report.columns),
        [
            ("id", ColumnType::Integer, 0),
            ("score", ColumnType::Float, 1),
            ("label", ColumnType::String, 1),
            ("flag", ColumnType::Boolean, 1),
        ]
    );
    assert_eq!(report.missing_values, 3);
    assert_eq!(report.duplicate_rows, 1);
    let label = report.label.as_ref().unwrap();
    assert_eq!(
        label.classes,
        [("a", 3), ("b", 2)].map(|(k, v)| (k.to_owned(), v)).into()
    );
    assert_eq!(label.missing, 1);

    // score = 1, 2, 4, 1, 100: q1 = 1, q3 = 4, fences -3.5 and 8.5; 100 is out.
    let score = column(&report.columns, "score").numeric.as_ref().unwrap();
    assert_eq!((score.q1, score.q3, score.upper_fence), (1.0, 4.0, 8.5));
    assert_eq!(score.outliers, 1);
    assert_eq!(report.outliers, 1);
}

#[test]
fn damaged_parquet_is_invalid_input() {
    let dir = TempDir::new().unwrap();
    let path = write(&dir, "broken.parquet", "PAR1 this is not really parquet");
    let err = audit(&request(&path)).unwrap_err();
    assert!(
        matches!(
            err,
            AuditError::Malformed {
                at: Position::File,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("not a readable Parquet file"),
        "{err}"
    );
    assert!(err.is_invalid_input());
}

#[test]
fn expected_sha256_is_checked() {
    let dir = TempDir::new().unwrap();
    let path = write(&dir, "people.csv", PEOPLE_CSV);
    let actual = sha256_hex(PEOPLE_CSV.as_bytes());

    // Matching, in upper case, passes.
    let report = audit(&request(&path).expected_sha256(actual.to_uppercase())).unwrap();
    assert_eq!(report.sha256, actual);

    let expected = sha256_hex(b"some other file");
    let err = audit(&request(&path).expected_sha256(&expected)).unwrap_err();
    match &err {
        AuditError::IntegrityMismatch {
            expected: e,
            actual: a,
        } => assert_eq!((e, a), (&expected, &actual)),
        other => panic!("{other:?}"),
    }
    let message = err.to_string();
    assert!(
        message.contains(&expected) && message.contains(&actual),
        "{message}"
    );
    assert!(err.is_invalid_input());

    let err = audit(&request(&path).expected_sha256("abc")).unwrap_err();
    assert!(
        matches!(err, AuditError::InvalidExpectedSha256 { .. }),
        "{err:?}"
    );
}

#[test]
fn unknown_label_column_names_the_available_ones() {
    let dir = TempDir::new().unwrap();
    let csv = write(&dir, "people.csv", PEOPLE_CSV);
    let err = audit(&request(&csv).label_column("class")).unwrap_err();
    assert!(matches!(&err, AuditError::UnknownLabelColumn { column, .. } if column == "class"));
    assert_eq!(
        err.to_string(),
        "label column \"class\" not found; available columns: id, age, score, active, species, notes"
    );
    assert!(err.is_invalid_input());

    // JSON Lines finds its columns as it goes, so it can only tell at the end.
    let jsonl = write(&dir, "reviews.jsonl", REVIEWS_JSONL);
    let err = audit(&request(&jsonl).label_column("class")).unwrap_err();
    assert!(
        err.to_string()
            .ends_with("available columns: text, label, score, extra, meta, flag"),
        "{err}"
    );
}

#[test]
fn malformed_csv_row_names_the_line() {
    let dir = TempDir::new().unwrap();
    let path = write(&dir, "bad.csv", "a,b,c\n1,2,3\n4,5,6\n7,8\n9,10,11\n");
    let err = audit(&request(&path)).unwrap_err();
    assert!(
        matches!(
            err,
            AuditError::Malformed {
                at: Position::Line(4),
                format: DatasetFormat::Csv,
                ..
            }
        ),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(message.contains("line 4"), "{message}");
    assert!(
        message.contains("expected 3 fields, as in the header, but found 2"),
        "{message}"
    );
    assert!(err.is_invalid_input());

    let path = dir.path().join("latin1.csv");
    std::fs::write(&path, b"name\nJos\xe9\n").unwrap();
    let err = audit(&request(&path)).unwrap_err();
    assert!(err.to_string().contains("line 2"), "{err}");
    assert!(err.to_string().contains("not valid UTF-8"), "{err}");
}

#[test]
fn unsupported_scheme_is_refused_by_name() {
    for (location, scheme) in [
        ("s3://bucket/train.csv", "s3"),
        ("https://example.com/train.csv", "https"),
    ] {
        let err = audit(&AuditRequest::new(location)).unwrap_err();
        assert!(
            matches!(&err, AuditError::UnsupportedLocation { scheme: s, .. } if s == scheme),
            "{err:?}"
        );
        assert!(err.to_string().contains(&format!("{scheme:?}")), "{err}");
        assert!(err.is_invalid_input());
    }
}

#[test]
fn file_uri_is_read() {
    let dir = TempDir::new().unwrap();
    let path = write(&dir, "people.csv", PEOPLE_CSV);
    let report = audit(&AuditRequest::new(format!("file://{}", path.display()))).unwrap();
    assert_eq!(report.rows, 7);
}

#[test]
fn missing_file_names_path_and_reason() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("nowhere.csv");
    let err = audit(&request(&path)).unwrap_err();
    match &err {
        AuditError::Open { path: p, source } => {
            assert_eq!(p, &path);
            assert_eq!(source.kind(), io::ErrorKind::NotFound);
        }
        other => panic!("{other:?}"),
    }
    let message = err.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("No such file or directory"), "{message}");
    assert!(err.is_invalid_input());

    // A folder is not a dataset either.
    let folder = dir.path().join("folder.csv");
    std::fs::create_dir(&folder).unwrap();
    let err = audit(&request(&folder)).unwrap_err();
    assert!(matches!(err, AuditError::Open { .. }), "{err:?}");
}

#[test]
fn unknown_extension_lists_the_supported_ones() {
    let dir = TempDir::new().unwrap();
    let path = write(&dir, "train.csv.gz", "");
    let err = audit(&request(&path)).unwrap_err();
    assert!(matches!(&err, AuditError::UnsupportedFormat { extension: Some(e), .. } if e == "gz"));
    assert!(
        err.to_string().ends_with(
            "extension .gz is not supported; supported extensions: .csv, .jsonl, .ndjson, .parquet"
        ),
        "{err}"
    );
    assert!(err.is_invalid_input());
}

#[test]
fn max_rows_truncates_but_the_digest_covers_the_file() {
    let dir = TempDir::new().unwrap();
    let path = write(&dir, "people.csv", PEOPLE_CSV);
    let limits = AuditLimits {
        max_rows: 3,
        ..AuditLimits::default()
    };
    let report = audit(&request(&path).limits(limits)).unwrap();
    assert_eq!(report.rows, 3);
    assert!(report.truncated);
    assert_eq!(report.sha256, sha256_hex(PEOPLE_CSV.as_bytes()));
    assert_eq!(column(&report.columns, "age").missing, 1);

    // Exactly as many rows as the limit is not truncation.
    let limits = AuditLimits {
        max_rows: 7,
        ..AuditLimits::default()
    };
    assert!(!audit(&request(&path).limits(limits)).unwrap().truncated);

    let jsonl = write(&dir, "reviews.jsonl", REVIEWS_JSONL);
    let report = audit(&request(&jsonl).limits(AuditLimits {
        max_rows: 2,
        ..AuditLimits::default()
    }))
    .unwrap();
    assert_eq!((report.rows, report.truncated), (2, true));
}

#[test]
fn a_line_longer_than_the_limit_is_malformed_input_not_a_memory_hog() {
    let dir = TempDir::new().unwrap();
    let limits = AuditLimits {
        max_line_bytes: 1 << 20,
        ..AuditLimits::default()
    };
    // A header and one row, then a "row" of 8 MiB without a newline.
    let mut text = String::from("a,b\n1,2\n");
    text.push_str(&"x".repeat(8 << 20));
    for name in ["long.csv", "long.jsonl"] {
        let content = if name.ends_with(".jsonl") {
            text.replacen("a,b\n1,2\n", "{\"a\": 1}\n", 1)
        } else {
            text.clone()
        };
        let path = write(&dir, name, &content);
        let err = audit(&request(&path).limits(limits)).unwrap_err();
        assert!(err.is_invalid_input(), "{name}: {err}");
        let message = err.to_string();
        assert!(
            message.contains("runs past 1048576 bytes") && message.contains("line"),
            "{name}: {message}"
        );
    }
    // Under the limit, the same kind of file audits.
    let path = write(&dir, "ok.csv", &format!("a\n{}\n", "y".repeat(1000)));
    assert_eq!(audit(&request(&path).limits(limits)).unwrap().rows, 1);
}

#[test]
fn label_classes_past_the_limit_are_counted_as_other() {
    let dir = TempDir::new().unwrap();
    let path = write(&dir, "l.csv", "y\na\nb\nc\na\nd\n");
    let limits = AuditLimits {
        max_label_classes: 2,
        ..AuditLimits::default()
    };
    let report = audit(&request(&path).label_column("y").limits(limits)).unwrap();
    let label = report.label.unwrap();
    assert_eq!(
        label.classes,
        [("a", 2), ("b", 1)].map(|(k, v)| (k.to_owned(), v)).into()
    );
    assert_eq!(label.other, 2);
}

#[test]
fn empty_csv_is_an_empty_report() {
    let dir = TempDir::new().unwrap();
    let path = write(&dir, "empty.csv", "");
    let report = audit(&request(&path)).unwrap();
    assert_eq!(
        (report.rows, report.columns.len(), report.file_size),
        (0, 0, 0)
    );
    assert_eq!(report.sha256, sha256_hex(b""));
}

#[test]
fn progress_is_reported_and_cancel_stops() {
    let dir = TempDir::new().unwrap();
    let path = write(&dir, "people.csv", PEOPLE_CSV);
    let mut seen = Vec::new();
    audit_with(&request(&path), |p| {
        seen.push(p);
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(seen.first().unwrap().phase, AuditPhase::Hashing);
    assert!(seen.iter().all(|p| (0.0..=1.0).contains(&p.fraction())));

    let err = audit_with(&request(&path), |_| ControlFlow::Break(())).unwrap_err();
    assert!(err.is_cancelled());
    assert!(!err.is_invalid_input());
}

#[test]
fn only_mid_read_io_errors_are_not_the_inputs_fault() {
    let read = AuditError::Read {
        path: "x.csv".into(),
        source: io::Error::other("disk on fire"),
    };
    assert!(!read.is_invalid_input());
    assert_eq!(read.to_string(), "error reading x.csv: disk on fire");
}

#[test]
fn metrics_and_json() {
    let dir = TempDir::new().unwrap();
    let path = write(&dir, "people.csv", PEOPLE_CSV);
    let report = audit(&request(&path).label_column("species")).unwrap();
    let metrics = report_metrics(&report);
    let expected = [
        ("columns", 6.0),
        ("duplicate_rows", 2.0),
        ("file_size_bytes", PEOPLE_CSV.len() as f64),
        ("label_classes", 3.0),
        ("missing_values", 10.0),
        ("outliers", 0.0),
        ("rows", 7.0),
        // Duplicates (2 of 7) and notes (4 of 7 missing) are problems; the other missing
        // values, warnings.
        ("problems", 2.0),
        ("warnings", 4.0),
    ]
    .map(|(k, v)| (k.to_owned(), v))
    .into();
    assert_eq!(metrics, expected);

    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["format"], "csv");
    assert_eq!(json["columns"][2]["inferred_type"], "mixed");
    assert_eq!(json["label"]["classes"]["setosa"], 4);
    let back: nexa_compute::AuditReport = serde_json::from_value(json).unwrap();
    assert_eq!(back, report);
}

#[test]
fn request_from_job_params() {
    let params = nexa_runtime::AuditParams {
        label_column: Some("label".into()),
        ..nexa_runtime::AuditParams::new("file:///data/train.parquet")
    };
    let request = AuditRequest::from(&params);
    assert_eq!(request.location, params.dataset_uri);
    assert_eq!(request.label_column.as_deref(), Some("label"));
    assert_eq!(request.limits, AuditLimits::default());
}

#[test]
fn the_report_gives_a_verdict_with_its_findings() {
    let dir = TempDir::new().unwrap();
    let clean = write(&dir, "clean.csv", "x,y\n1,a\n2,b\n3,a\n4,b\n");
    let report = audit(&request(&clean).label_column("y")).unwrap();
    assert_eq!((report.verdict, report.findings.len()), (Verdict::Ok, 0));

    // One value missing in 10: a warning naming the column.
    let gappy = write(
        &dir,
        "gappy.csv",
        "x,y\n1,a\n2,b\n3,a\n4,b\n5,a\n6,\n7,a\n8,b\n9,a\n10,b\n",
    );
    let report = audit(&request(&gappy)).unwrap();
    assert_eq!(report.verdict, Verdict::Warnings);
    let f = &report.findings[0];
    assert_eq!(
        (f.severity, f.check.as_str(), f.column.as_deref()),
        (Severity::Warning, "missing_values", Some("y"))
    );
    assert!(
        f.message.contains("1 of 10") && f.message.contains("10.0%"),
        "{}",
        f.message
    );

    // The same row three times: duplicates and one class are problems, a constant column a
    // warning; problems come first.
    let copies = write(&dir, "copies.csv", "x,y\n1,a\n1,a\n1,a\n");
    let report = audit(&request(&copies).label_column("y")).unwrap();
    assert_eq!(report.verdict, Verdict::Problems);
    let checks: Vec<(&str, Severity)> = report
        .findings
        .iter()
        .map(|f| (f.check.as_str(), f.severity))
        .collect();
    assert_eq!(
        checks,
        [
            ("duplicates", Severity::Problem),
            ("single_class", Severity::Problem),
            ("constant_column", Severity::Warning),
        ]
    );
    let metrics = report_metrics(&report);
    assert_eq!((metrics["problems"], metrics["warnings"]), (2.0, 1.0));
    // In the JSON a job's result shows.
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["verdict"], "problems");
    assert_eq!(json["findings"][0]["check"], "duplicates");
}
