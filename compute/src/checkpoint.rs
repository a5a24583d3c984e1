//! Files that must never be seen half-written: model files, dataset files, and training
//! checkpoints.
//!
//! A checkpoint is a folder `step-<step>` under the checkpoint root holding
//! `state.safetensors` (weights, optimizer moments, and in the metadata the step, epoch and
//! RNG state) and, written last, a `COMPLETE` marker with the SHA-256 of the state file.
//! The folder is built under a temporary name and renamed, and the marker is written to a
//! temporary name and renamed, each after an fsync; so after a crash at any point a folder
//! with a marker is whole, and a folder without one is ignored (and cleared by the next
//! save of that step). [`CheckpointDir::latest`] picks the complete checkpoint with the
//! highest step and checks its digest.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use ndarray::Array2;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use sha2::{Digest, Sha256};

use crate::ComputeError;

/// Named host tensors, sorted by name.
pub(crate) type TensorMap = BTreeMap<String, Array2<f32>>;

/// Metadata key of the model configuration (JSON).
pub(crate) const CONFIG_KEY: &str = "nexa.model_config";
/// Metadata key of the file format version.
const FORMAT_KEY: &str = "nexa.format";
/// The format this build writes and reads.
const FORMAT: &str = "1";

const STATE_FILE: &str = "state.safetensors";
const MARKER_FILE: &str = "COMPLETE";

/// A name beside `path` to write to before renaming onto it.
pub(crate) fn temp_path(path: &Path) -> PathBuf {
    let mut name = std::ffi::OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(format!(".tmp-{}", std::process::id()));
    path.with_file_name(name)
}

/// Writes `bytes` to `path` through a temporary file, fsynced, then renamed.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ComputeError> {
    let tmp = temp_path(path);
    let result = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(ComputeError::io("cannot write", path, e));
    }
    sync_parent(path);
    Ok(())
}

/// Makes a rename durable. Best effort: some filesystems cannot fsync a folder.
fn sync_parent(path: &Path) {
    if let Some(parent) = path.parent()
        && let Ok(dir) = File::open(parent)
    {
        let _ = dir.sync_all();
    }
}

fn serialize(
    tensors: &TensorMap,
    mut metadata: HashMap<String, String>,
) -> Result<Vec<u8>, ComputeError> {
    metadata.insert(FORMAT_KEY.to_owned(), FORMAT.to_owned());
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, t)| {
            let data = t.iter().flat_map(|v| v.to_le_bytes()).collect();
            (name.clone(), vec![t.nrows(), t.ncols()], data)
        })
        .collect();
    let mut views = Vec::with_capacity(bytes.len());
    for (name, shape, data) in &bytes {
        let view = TensorView::new(Dtype::F32, shape.clone(), data)
            .map_err(|e| ComputeError::invalid("tensor", format!("{name}: {e}")))?;
        views.push((name.clone(), view));
    }
    let bytes = safetensors::serialize(views, Some(metadata))
        .map_err(|e| ComputeError::invalid("tensors", e.to_string()))?;
    canonical(bytes)
}

/// The same safetensors file with its header's keys in sorted order. safetensors writes the
/// metadata map in hash order, which differs from one process to the next; sorted, equal
/// models and checkpoints are equal bytes, so they get one content address as artifacts.
fn canonical(bytes: Vec<u8>) -> Result<Vec<u8>, ComputeError> {
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Tensor {
        dtype: String,
        shape: Vec<usize>,
        data_offsets: [u64; 2],
    }
    #[derive(serde::Serialize, serde::Deserialize)]
    #[serde(untagged)]
    enum Entry {
        Tensor(Tensor),
        Metadata(std::collections::BTreeMap<String, String>),
    }
    let bad = |why: String| ComputeError::invalid("tensors", why);
    let len = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize)
        .ok_or_else(|| bad("no header".into()))?;
    let header = bytes
        .get(8..8 + len)
        .ok_or_else(|| bad("a header longer than the file".into()))?;
    let entries: std::collections::BTreeMap<String, Entry> =
        serde_json::from_slice(header).map_err(|e| bad(format!("header: {e}")))?;
    let mut header = serde_json::to_vec(&entries).map_err(|e| bad(format!("header: {e}")))?;
    // Padded with spaces so the data starts 8-byte aligned, as safetensors writes it.
    header.resize((8 + header.len()).next_multiple_of(8) - 8, b' ');
    let mut out = Vec::with_capacity(8 + header.len() + bytes.len() - 8 - len);
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(&bytes[8 + len..]);
    Ok(out)
}

fn deserialize(
    bytes: &[u8],
    path: &Path,
) -> Result<(TensorMap, HashMap<String, String>), ComputeError> {
    let bad = |reason: String| ComputeError::Checkpoint {
        path: path.to_path_buf(),
        reason,
    };
    let (_, header) = SafeTensors::read_metadata(bytes)
        .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
    let metadata = header.metadata().clone().unwrap_or_default();
    match metadata.get(FORMAT_KEY).map(String::as_str) {
        Some(FORMAT) => {}
        Some(other) => {
            return Err(bad(format!(
                "format {other}, this build reads format {FORMAT}"
            )));
        }
        None => return Err(bad("not written by Nexa Forge (no format key)".into())),
    }
    let file =
        SafeTensors::deserialize(bytes).map_err(|e| bad(format!("not a safetensors file: {e}")))?;
    let mut tensors = TensorMap::new();
    for (name, view) in file.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(bad(format!(
                "tensor {name:?} is {:?}, not F32",
                view.dtype()
            )));
        }
        let shape = match *view.shape() {
            [rows, cols] => (rows, cols),
            ref other => return Err(bad(format!("tensor {name:?} has shape {other:?}"))),
        };
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let array = Array2::from_shape_vec(shape, values)
            .map_err(|e| bad(format!("tensor {name:?}: {e}")))?;
        tensors.insert(name, array);
    }
    Ok((tensors, metadata))
}

/// Writes named tensors and metadata to a safetensors file, atomically.
pub(crate) fn write_tensors(
    path: &Path,
    tensors: &TensorMap,
    metadata: HashMap<String, String>,
) -> Result<(), ComputeError> {
    write_atomic(path, &serialize(tensors, metadata)?)
}

/// Reads a safetensors file written by [`write_tensors`].
pub(crate) fn read_tensors(
    path: &Path,
) -> Result<(TensorMap, HashMap<String, String>), ComputeError> {
    let bytes = fs::read(path).map_err(|e| ComputeError::io("cannot read", path, e))?;
    deserialize(&bytes, path)
}

/// A checkpoint read back: where it was, its tensors and its metadata.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    /// The checkpoint's folder.
    pub path: PathBuf,
    /// The step it was taken at.
    pub step: u64,
    pub(crate) tensors: TensorMap,
    pub(crate) metadata: HashMap<String, String>,
}

/// The folder training checkpoints go in.
#[derive(Clone, Debug)]
pub struct CheckpointDir {
    root: PathBuf,
    keep: usize,
}

impl CheckpointDir {
    /// Checkpoints under `root` (created if missing), keeping the newest `keep` complete ones
    /// (at least 1).
    pub fn new(root: impl Into<PathBuf>, keep: usize) -> Result<Self, ComputeError> {
        let root = root.into();
        fs::create_dir_all(&root).map_err(|e| ComputeError::io("cannot create", &root, e))?;
        Ok(Self {
            root,
            keep: keep.max(1),
        })
    }

    /// The root folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn folder(&self, step: u64) -> PathBuf {
        self.root.join(format!("step-{step:012}"))
    }

    /// Saves a checkpoint for `step`; returns its folder.
    pub(crate) fn save(
        &self,
        step: u64,
        tensors: &TensorMap,
        metadata: HashMap<String, String>,
    ) -> Result<PathBuf, ComputeError> {
        let bytes = serialize(tensors, metadata)?;
        let digest = hex(&Sha256::digest(&bytes));
        let folder = self.folder(step);
        let tmp = temp_path(&folder);
        let io = |action, path: &Path, e| ComputeError::io(action, path, e);
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(|e| io("cannot remove", &tmp, e))?;
        }
        fs::create_dir_all(&tmp).map_err(|e| io("cannot create", &tmp, e))?;
        let state = tmp.join(STATE_FILE);
        (|| {
            let mut file = File::create(&state)?;
            file.write_all(&bytes)?;
            file.sync_all()
        })()
        .map_err(|e| io("cannot write", &state, e))?;
        sync_parent(&state);
        if folder.exists() {
            // An incomplete checkpoint of the same step from an interrupted run.
            fs::remove_dir_all(&folder).map_err(|e| io("cannot remove", &folder, e))?;
        }
        fs::rename(&tmp, &folder).map_err(|e| io("cannot rename into", &folder, e))?;
        sync_parent(&folder);
        write_atomic(&folder.join(MARKER_FILE), digest.as_bytes())?;
        self.prune()?;
        Ok(folder)
    }

    /// The state file of the checkpoint of `step` (whether or not it exists): what a caller
    /// copies elsewhere to resume from on another machine.
    pub fn state_file(&self, step: u64) -> PathBuf {
        self.folder(step).join(STATE_FILE)
    }

    /// Makes the state file at `state` (a copy of another machine's [`CheckpointDir::state_file`])
    /// the complete checkpoint of `step` here, unless a complete one of that step is here
    /// already. The state is read and parsed first, so a damaged file is refused.
    pub fn import(&self, step: u64, state: &Path) -> Result<(), ComputeError> {
        if self.complete_steps()?.contains(&step) {
            return Ok(());
        }
        let bytes = fs::read(state).map_err(|e| ComputeError::io("cannot read", state, e))?;
        let (tensors, metadata) = deserialize(&bytes, state)?;
        self.save(step, &tensors, metadata).map(drop)
    }

    /// The steps of the complete checkpoints, ascending.
    pub fn complete_steps(&self) -> Result<Vec<u64>, ComputeError> {
        let entries =
            fs::read_dir(&self.root).map_err(|e| ComputeError::io("cannot list", &self.root, e))?;
        let mut steps = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| ComputeError::io("cannot list", &self.root, e))?;
            let name = entry.file_name();
            let Some(step) = name
                .to_str()
                .and_then(|n| n.strip_prefix("step-"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            if entry.path().join(MARKER_FILE).is_file() {
                steps.push(step);
            }
        }
        steps.sort_unstable();
        Ok(steps)
    }

    /// The complete checkpoint with the highest step, or `None` when there is none. Fails
    /// when that checkpoint's state does not match its marker's digest.
    pub fn latest(&self) -> Result<Option<Checkpoint>, ComputeError> {
        let Some(&step) = self.complete_steps()?.last() else {
            return Ok(None);
        };
        let folder = self.folder(step);
        let state = folder.join(STATE_FILE);
        let marker = folder.join(MARKER_FILE);
        let expected =
            fs::read_to_string(&marker).map_err(|e| ComputeError::io("cannot read", &marker, e))?;
        let bytes = fs::read(&state).map_err(|e| ComputeError::io("cannot read", &state, e))?;
        if hex(&Sha256::digest(&bytes)) != expected.trim() {
            return Err(ComputeError::Checkpoint {
                path: state,
                reason: "contents do not match the digest in COMPLETE (damaged on disk); \
                         delete this checkpoint folder to resume from the one before"
                    .into(),
            });
        }
        let (tensors, metadata) = deserialize(&bytes, &state)?;
        Ok(Some(Checkpoint {
            path: folder,
            step,
            tensors,
            metadata,
        }))
    }

    fn prune(&self) -> Result<(), ComputeError> {
        let steps = self.complete_steps()?;
        if steps.len() > self.keep {
            for step in &steps[..steps.len() - self.keep] {
                let folder = self.folder(*step);
                // The marker goes first, so a half-removed folder is incomplete, not damaged.
                let _ = fs::remove_file(folder.join(MARKER_FILE));
                fs::remove_dir_all(&folder)
                    .map_err(|e| ComputeError::io("cannot remove", &folder, e))?;
            }
        }
        Ok(())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensors(v: f32) -> TensorMap {
        let mut map = TensorMap::new();
        map.insert("w".into(), Array2::from_elem((2, 3), v));
        map
    }

    /// Regression: safetensors wrote the metadata map in hash order, so the same model saved
    /// by two processes was two different files (and two artifacts).
    #[test]
    fn equal_tensors_and_metadata_are_equal_bytes() {
        let serialized = || {
            let metadata: HashMap<String, String> = (0..8)
                .map(|i| (format!("key{i}"), format!("value{i}")))
                .collect();
            let mut map = tensors(1.5);
            map.insert("b".into(), Array2::from_elem((1, 3), -2.0));
            serialize(&map, metadata).unwrap()
        };
        let first = serialized();
        for _ in 0..20 {
            assert_eq!(serialized(), first);
        }
        assert_eq!(u64::from_le_bytes(first[..8].try_into().unwrap()) % 8, 0);
        let (back, metadata) = deserialize(&first, Path::new("x")).unwrap();
        assert_eq!(back["w"], Array2::from_elem((2, 3), 1.5));
        assert_eq!(back["b"], Array2::from_elem((1, 3), -2.0));
        assert_eq!(metadata["key7"], "value7");
    }

    #[test]
    fn latest_complete_wins_and_incomplete_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let ckpt = CheckpointDir::new(dir.path(), 2).unwrap();
        assert!(ckpt.latest().unwrap().is_none());
        ckpt.save(10, &tensors(1.0), HashMap::new()).unwrap();
        ckpt.save(20, &tensors(2.0), HashMap::new()).unwrap();
        // A crash after the rename and before the marker: step 30 has no COMPLETE.
        let folder = ckpt.save(30, &tensors(3.0), HashMap::new()).unwrap();
        fs::remove_file(folder.join(MARKER_FILE)).unwrap();
        let latest = ckpt.latest().unwrap().unwrap();
        assert_eq!(latest.step, 20);
        assert_eq!(latest.tensors["w"][[0, 0]], 2.0);
        // Saving step 30 again replaces the incomplete folder; keep = 2 prunes step 10.
        ckpt.save(30, &tensors(3.5), HashMap::new()).unwrap();
        assert_eq!(ckpt.complete_steps().unwrap(), vec![20, 30]);
        assert_eq!(ckpt.latest().unwrap().unwrap().tensors["w"][[1, 2]], 3.5);
    }

    #[test]
    fn damaged_state_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let ckpt = CheckpointDir::new(dir.path(), 3).unwrap();
        let folder = ckpt.save(5, &tensors(1.0), HashMap::new()).unwrap();
        let state = folder.join(STATE_FILE);
        let mut bytes = fs::read(&state).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&state, bytes).unwrap();
        let e = ckpt.latest().unwrap_err().to_string();
        assert!(e.contains("digest"), "{e}");
    }
}
