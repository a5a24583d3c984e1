//! The CUDA backend (cargo feature `cuda`): matrix products by cuBLAS, everything else by
//! the kernels of `cuda/kernels.cu`, compiled by NVRTC once when the backend is created.
//!
//! What it guarantees:
//!
//! - **The CPU's results, to rounding.** fp32 throughout. cuBLAS runs in pedantic math mode:
//!   fp32 as written, never TF32 tensor cores, nor the BF16x9 emulation of fp32 that an
//!   environment variable can switch on under the default mode. The kernels are
//!   compiled without FMA contraction and do each element's arithmetic in the CPU backend's
//!   order, so elementwise results (bias, activation derivatives, AdamW, scaling) are
//!   bit-identical; only `exp`, `log` and `tanh` (a few ulp) and the order of summation in
//!   reductions and matrix products differ. The parity tests (`tests/cuda_parity.rs`) hold
//!   every operation to a relative error of 1e-4.
//! - **Loaded at run time.** cudarc opens `libcuda`, `libcublas` and `libnvrtc` when first
//!   used, so the crate builds and links with no CUDA installed. [`CudaBackend::new`] checks
//!   the libraries are there and returns an error naming the missing one; discovery
//!   ([`probe_devices`]) returns no device. cudarc panics on a missing library or symbol
//!   rather than returning an error, so both also catch a panic from inside it.
//! - **One stream per backend.** Every operation is queued on it in order; only downloads
//!   (and the losses and sums, which return a host number) wait for the device. A tensor
//!   from another `CudaBackend` is refused rather than raced.
//! - **No panic on any input**: shapes are checked before anything is launched, labels are
//!   checked on the host, sizes cuBLAS cannot take are refused, and errors from the driver,
//!   cuBLAS and NVRTC become [`ComputeError::Backend`].
//!
//! What it does not do: several GPUs at once, mixed precision, CUDA graphs, or kernels
//! tuned beyond the obvious (the models are small MLPs; launch overhead, not arithmetic,
//! bounds a step at batch sizes of a few hundred).
//!
//! `unsafe` is allowed in this module only (the crate denies it elsewhere): launching a
//! kernel, calling cuBLAS and loading the driver are `unsafe` in cudarc because the
//! compiler cannot check a kernel's signature or its memory accesses. Each block says what
//! makes it sound.

use std::any::Any;
use std::ffi::{CString, c_void};
use std::fmt;
use std::panic;
use std::sync::{Arc, Mutex};

use cudarc::cublas::{self, CudaBlas, Gemm, GemmConfig};
use cudarc::driver::{
    self, CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DriverError, LaunchConfig,
    PushKernelArg,
};
use cudarc::nvrtc::{self, CompileOptions};
use ndarray::Array2;

use super::{Activation, AdamWStep, Backend, check_labels, same_shape};
use crate::{ComputeError, DeviceInfo};

/// The kernels' source; see the rules at its top.
const KERNELS: &str = include_str!("cuda/kernels.cu");

/// Threads per block of the elementwise and reduction kernels (`BLOCK` in kernels.cu).
const BLOCK: u32 = 256;
/// At most this many blocks per grid dimension: every loop is grid-stride, so more would
/// only add scheduling. 65,535 is also the limit of the `y` dimension.
const MAX_GRID: usize = 65_535;
/// Blocks of the first pass of a whole-tensor sum; the second pass sums their partials.
const REDUCE_BLOCKS: usize = 1024;
/// Rows summed per block by `sum_rows_chunked` (`SUM_ROWS_CHUNK` in kernels.cu).
const SUM_ROWS_CHUNK: usize = 256;

/// A matrix on a CUDA device: row-major `f32`, `rows × cols`.
///
/// Cloning is cheap and cannot fail: clones share the device memory, and an in-place
/// operation first copies memory that is shared (copy on write), so no clone ever sees
/// another's writes. (cudarc's own `Clone` of device memory panics when the copy fails.)
#[derive(Clone, Debug)]
pub struct CudaTensor {
    rows: usize,
    cols: usize,
    /// `max(rows · cols, 1)` elements: CUDA cannot allocate zero bytes.
    data: Arc<CudaSlice<f32>>,
}

impl CudaTensor {
    fn len(&self) -> usize {
        self.rows * self.cols
    }
}

/// The compiled kernels, by the names of kernels.cu.
struct Kernels {
    bias_activation: CudaFunction,
    activation_backward: CudaFunction,
    sum_rows_chunked: CudaFunction,
    softmax_rows: CudaFunction,
    cross_entropy_rows: CudaFunction,
    kl_rows: CudaFunction,
    sum_f64: CudaFunction,
    squares_partial: CudaFunction,
    mse_partial: CudaFunction,
    scale: CudaFunction,
    add_scaled: CudaFunction,
    adamw: CudaFunction,
}

impl Kernels {
    fn load(module: &Arc<CudaModule>) -> Result<Self, ComputeError> {
        let f = |name: &str| {
            module
                .load_function(name)
                .map_err(|e| failed(&format!("loading kernel {name}"), e))
        };
        Ok(Self {
            bias_activation: f("bias_activation")?,
            activation_backward: f("activation_backward")?,
            sum_rows_chunked: f("sum_rows_chunked")?,
            softmax_rows: f("softmax_rows")?,
            cross_entropy_rows: f("cross_entropy_rows")?,
            kl_rows: f("kl_rows")?,
            sum_f64: f("sum_f64")?,
            squares_partial: f("squares_partial")?,
            mse_partial: f("mse_partial")?,
            scale: f("scale")?,
            add_scaled: f("add_scaled")?,
            adamw: f("adamw")?,
        })
    }
}

/// The backend on one CUDA device. Create it with [`CudaBackend::new`]; pick the device
/// with [`crate::best_device`].
pub struct CudaBackend {
    name: String,
    info: DeviceInfo,
    stream: Arc<CudaStream>,
    /// Behind a lock because a cuBLAS handle must not be used by two threads at once, and
    /// the backend may be shared between threads (all its other calls are thread-safe).
    blas: Mutex<CudaBlas>,
    kernels: Kernels,
}

impl fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CudaBackend")
            .field("device", &self.info)
            .finish_non_exhaustive()
    }
}

fn failed(what: &str, error: impl fmt::Display) -> ComputeError {
    ComputeError::Backend {
        backend: "cuda".into(),
        reason: format!("{what}: {error}"),
    }
}

fn driver_failed(what: &'static str) -> impl Fn(DriverError) -> ComputeError {
    move |e| failed(what, e)
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "unknown panic".into())
}

/// What is missing, and how to get it, when a shared library the backend needs cannot be
/// loaded.
fn missing_library() -> Option<String> {
    const TOOLKIT: &str = "install the CUDA toolkit, or put its lib folder on LD_LIBRARY_PATH";
    // SAFETY: loading a shared library runs its initialisers. These are NVIDIA's libraries,
    // looked up by the names cudarc itself loads them by on first use, which any use of the
    // backend does anyway; nothing else is called in them here.
    let (driver, cublas, nvrtc) = unsafe {
        (
            driver::sys::is_culib_present(),
            cublas::sys::is_culib_present(),
            nvrtc::sys::is_culib_present(),
        )
    };
    if !driver {
        Some("the NVIDIA driver library (libcuda) was not found; install the NVIDIA driver".into())
    } else if !cublas {
        Some(format!("cuBLAS (libcublas) was not found; {TOOLKIT}"))
    } else if !nvrtc {
        Some(format!("NVRTC (libnvrtc) was not found; {TOOLKIT}"))
    } else {
        None
    }
}

/// The CUDA devices the driver reports; none when there is no driver, no device, or the
/// driver fails. Never panics.
pub(crate) fn probe_devices() -> Vec<DeviceInfo> {
    // cudarc panics instead of returning an error when a library or one of its symbols is
    // missing (an old driver); that means no usable device here.
    panic::catch_unwind(|| {
        // SAFETY: as in `missing_library`.
        if !unsafe { driver::sys::is_culib_present() } {
            return Vec::new();
        }
        let Ok(count) = CudaContext::device_count() else {
            return Vec::new();
        };
        (0..count).filter_map(|o| describe(o).ok()).collect()
    })
    .unwrap_or_default()
}

fn describe(ordinal: i32) -> Result<DeviceInfo, DriverError> {
    use driver::sys::CUdevice_attribute::{
        CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR as MAJOR,
        CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR as MINOR,
    };
    let device = driver::result::device::get(ordinal)?;
    let name = driver::result::device::get_name(device)?;
    // SAFETY: `device` was just returned by cuDeviceGet, as these calls require.
    let (memory, major, minor) = unsafe {
        (
            driver::result::device::total_mem(device)?,
            driver::result::device::get_attribute(device, MAJOR)?,
            driver::result::device::get_attribute(device, MINOR)?,
        )
    };
    Ok(DeviceInfo {
        ordinal: usize::try_from(ordinal).unwrap_or_default(),
        name,
        total_memory: memory as u64,
        compute_capability: (
            u32::try_from(major).unwrap_or_default(),
            u32::try_from(minor).unwrap_or_default(),
        ),
    })
}

/// Keeps memory freed by the stream-ordered allocator in the device's current pool (the one
/// `cuMemAllocAsync` draws from) instead of handing it back to the driver at every
/// synchronisation (the default release threshold is 0). A training step frees and
/// reallocates the same sizes every time, and each synchronisation (a loss, a gradient
/// norm) would otherwise return them. The pool is the process's: freed memory stays
/// reserved for it until it exits. Best effort: on failure allocation is only slower.
fn keep_freed_memory(ctx: &CudaContext) {
    if !ctx.has_async_alloc() {
        return;
    }
    let mut threshold = u64::MAX;
    // SAFETY: `cu_device` is the context's own device; the release threshold attribute
    // takes a pointer to a `cuuint64_t`, which `threshold` is and outlives the call.
    let _ = unsafe {
        driver::result::device::get_mem_pool(ctx.cu_device()).and_then(|pool| {
            driver::result::mem_pool::set_attribute(
                pool,
                driver::sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                (&mut threshold as *mut u64).cast::<c_void>(),
            )
        })
    };
}

/// NVRTC's options. No FMA contraction: a fused multiply-add rounds once where the CPU
/// rounds twice, and keeping the CPU's roundings is what makes elementwise results
/// identical. Memory, not arithmetic, bounds these kernels, so it costs nothing measurable.
/// (The math library's `expf`, `logf` and `tanhf` keep their own explicit FMAs.)
const NVRTC_FMAD: &str = "--fmad=false";

/// The kernels, compiled. Machine code (CUBIN) for the device's architecture when NVRTC
/// knows it: the driver then has nothing to JIT-compile, and JIT compilation of PTX fails
/// when the toolkit is newer than the driver (CUDA's minor-version compatibility covers
/// machine code, not PTX). Otherwise PTX for NVRTC's default architecture, which the
/// driver compiles for the device when it loads it.
fn compile_kernels(capability: (u32, u32)) -> Result<nvrtc::Ptx, ComputeError> {
    if let Ok(cubin) = compile_cubin(capability) {
        return Ok(nvrtc::Ptx::from_binary(cubin));
    }
    let options = CompileOptions {
        options: vec![NVRTC_FMAD.into()],
        name: Some("nexa_kernels.cu".into()),
        ..CompileOptions::default()
    };
    nvrtc::compile_ptx_with_opts(KERNELS, options).map_err(|e| failed("compiling the kernels", e))
}

fn compile_cubin((major, minor): (u32, u32)) -> Result<Vec<u8>, String> {
    let source = CString::new(KERNELS).map_err(|e| e.to_string())?;
    let program = nvrtc::result::create_program(&source, None).map_err(|e| e.to_string())?;
    let options = [
        format!("--gpu-architecture=sm_{major}{minor}"),
        NVRTC_FMAD.to_owned(),
    ];
    // SAFETY: `program` was just created from `source`, which outlives it; it is used only
    // here and destroyed once, after its last use. The CUBIN buffer has the size NVRTC
    // reports for it.
    unsafe {
        let cubin = nvrtc::result::compile_program(program, &options).and_then(|()| {
            let mut size = 0usize;
            nvrtc::sys::nvrtcGetCUBINSize(program, &mut size).result()?;
            let mut bytes = vec![0u8; size];
            nvrtc::sys::nvrtcGetCUBIN(program, bytes.as_mut_ptr().cast()).result()?;
            Ok(bytes)
        });
        let _ = nvrtc::result::destroy_program(program);
        cubin.map_err(|e| e.to_string())
    }
}

/// A grid for `n` elements with one thread each, capped (the loops are grid-stride).
fn elementwise(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(BLOCK as usize).clamp(1, MAX_GRID) as u32, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One block per row (grid-stride over rows), as many threads as the row has columns,
/// rounded up to a power of two between a warp and `BLOCK`.
fn per_row(rows: usize, cols: usize) -> LaunchConfig {
    let threads = cols.clamp(32, BLOCK as usize).next_power_of_two() as u32;
    LaunchConfig {
        grid_dim: (rows.clamp(1, MAX_GRID) as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn activation_code(activation: Activation) -> i32 {
    // ACT_* in kernels.cu.
    match activation {
        Activation::Identity => 0,
        Activation::Relu => 1,
        Activation::Tanh => 2,
    }
}

fn cublas_dim(value: usize) -> Result<i32, ComputeError> {
    i32::try_from(value).map_err(|_| {
        ComputeError::invalid(
            "matrix size",
            format!("{value} rows or columns; cuBLAS takes at most {}", i32::MAX),
        )
    })
}

fn check_temperature(temperature: f32) -> Result<(), ComputeError> {
    if temperature.is_finite() && temperature > 0.0 {
        Ok(())
    } else {
        Err(ComputeError::invalid(
            "temperature",
            format!("{temperature}; must be positive"),
        ))
    }
}

impl CudaBackend {
    /// The backend on CUDA device `ordinal` (0 for the first; see [`crate::devices`]).
    ///
    /// Creates a stream, compiles the kernels (a second or so) and runs a tiny product to
    /// check the whole stack. Fails with [`ComputeError::Backend`] when the driver, cuBLAS
    /// or NVRTC is missing or fails, and with [`ComputeError::InvalidArgument`] when there
    /// is no such device.
    pub fn new(ordinal: usize) -> Result<Self, ComputeError> {
        if let Some(missing) = missing_library() {
            return Err(failed("cannot start", missing));
        }
        // See `probe_devices` for why a panic is caught.
        panic::catch_unwind(|| Self::create(ordinal)).unwrap_or_else(|payload| {
            Err(failed(
                "the CUDA libraries failed",
                panic_message(payload.as_ref()),
            ))
        })
    }

    fn create(ordinal: usize) -> Result<Self, ComputeError> {
        let count = CudaContext::device_count().map_err(driver_failed("cuInit"))?;
        let count = usize::try_from(count).unwrap_or_default();
        if ordinal >= count {
            return Err(ComputeError::invalid(
                "CUDA device",
                format!("cuda:{ordinal}; this machine has {count} CUDA device(s)"),
            ));
        }
        let info = describe(i32::try_from(ordinal).unwrap_or(i32::MAX))
            .map_err(driver_failed("querying the device"))?;
        let ctx = CudaContext::new(ordinal).map_err(driver_failed("creating a context"))?;
        // SAFETY: event tracking orders a buffer's uses across streams. This backend queues
        // everything on its one stream, in order, and refuses tensors of other streams
        // (`slice`), so there is nothing to order; without it every allocation would
        // create two events and every launch record them. It is turned off before the
        // first allocation, as cudarc requires.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx
            .new_stream()
            .map_err(driver_failed("creating a stream"))?;
        keep_freed_memory(&ctx);

        let ptx = compile_kernels(info.compute_capability)?;
        let module = ctx
            .load_module(ptx)
            .map_err(driver_failed("loading the kernels"))?;
        let kernels = Kernels::load(&module)?;

        let blas =
            CudaBlas::new(stream.clone()).map_err(|e| failed("creating a cuBLAS handle", e))?;
        // Pedantic, not the default: fp32 as written, never TF32 tensor cores (a 10-bit
        // mantissa, about 1e-3 relative error) nor BF16x9 emulation, which environment
        // variables can turn on under the default mode. Parity with the CPU at 1e-4 depends
        // on it.
        // SAFETY: the handle is alive (owned by `blas`) and the mode is a valid enum value.
        unsafe {
            cublas::sys::cublasSetMathMode(
                *blas.handle(),
                cublas::sys::cublasMath_t::CUBLAS_PEDANTIC_MATH,
            )
        }
        .result()
        .map_err(|e| failed("setting the cuBLAS math mode", e))?;

        let backend = Self {
            name: format!("cuda:{ordinal}"),
            info,
            stream,
            blas: Mutex::new(blas),
            kernels,
        };
        backend.self_check()?;
        Ok(backend)
    }

    /// A product and a kernel on a 1×1 matrix: fails here, with the error, when the PTX is
    /// too new for the driver or cuBLAS does not match it, instead of in the first step.
    fn self_check(&self) -> Result<(), ComputeError> {
        let x = self.upload(&Array2::from_elem((1, 1), 3.0))?;
        let mut y = self.matmul(&x, false, &x, true)?;
        self.scale(&mut y, 0.5)?;
        let value = self.download(&y)?[[0, 0]];
        if value == 4.5 {
            Ok(())
        } else {
            Err(failed("self-check", format!("3 · 3 / 2 gave {value}")))
        }
    }

    /// The device this backend runs on.
    pub fn device(&self) -> &DeviceInfo {
        &self.info
    }

    /// `tensor`'s memory, if it lives on this backend's stream.
    fn slice<'t>(&self, tensor: &'t CudaTensor) -> Result<&'t CudaSlice<f32>, ComputeError> {
        if Arc::ptr_eq(tensor.data.stream(), &self.stream) {
            Ok(&tensor.data)
        } else {
            Err(ComputeError::invalid(
                "tensor",
                format!("it belongs to another CudaBackend than {}", self.name),
            ))
        }
    }

    /// `tensor`'s memory for writing, copied first if a clone shares it.
    fn slice_mut<'t>(
        &self,
        tensor: &'t mut CudaTensor,
    ) -> Result<&'t mut CudaSlice<f32>, ComputeError> {
        self.slice(tensor)?;
        if Arc::get_mut(&mut tensor.data).is_none() {
            let copy = self
                .stream
                .clone_dtod(tensor.data.as_ref())
                .map_err(driver_failed("copying a shared tensor"))?;
            tensor.data = Arc::new(copy);
        }
        Arc::get_mut(&mut tensor.data)
            .ok_or_else(|| failed("copy on write", "the tensor is still shared"))
    }

    /// Uninitialised device memory for `len` values of `T` (at least one).
    fn alloc<T: driver::DeviceRepr>(&self, len: usize) -> Result<CudaSlice<T>, ComputeError> {
        // SAFETY: the memory is not initialised; every caller hands it to a kernel or to
        // cuBLAS that writes all `len` elements before anything reads them (see the rules
        // in kernels.cu). Device memory is never read as Rust values before that.
        unsafe { self.stream.alloc::<T>(len.max(1)) }.map_err(driver_failed("allocating"))
    }

    /// A `rows × cols` tensor whose every element the caller's kernel writes.
    fn output(&self, rows: usize, cols: usize) -> Result<CudaTensor, ComputeError> {
        let len = rows
            .checked_mul(cols)
            .ok_or_else(|| ComputeError::invalid("matrix size", format!("{rows}x{cols}")))?;
        Ok(CudaTensor {
            rows,
            cols,
            data: Arc::new(self.alloc(len)?),
        })
    }

    /// The sum of `parts[0..n]`, computed on the device and brought back: the second pass
    /// of every reduction. This waits for the stream.
    fn finish_sum(&self, parts: &CudaSlice<f64>, n: usize) -> Result<f64, ComputeError> {
        let mut out = self.alloc::<f64>(1)?;
        let n = n as u64;
        let mut launch = self.stream.launch_builder(&self.kernels.sum_f64);
        launch.arg(parts).arg(&n).arg(&mut out);
        // SAFETY: sum_f64(const double* in, u64 n, double* out): the arguments match, `parts`
        // holds at least n values and `out` one. One block, as the kernel expects.
        unsafe {
            launch.launch(LaunchConfig {
                grid_dim: (1, 1, 1),
                block_dim: (BLOCK, 1, 1),
                shared_mem_bytes: 0,
            })
        }
        .map_err(driver_failed("sum_f64"))?;
        let host = self
            .stream
            .clone_dtoh(&out)
            .map_err(driver_failed("reading a sum"))?;
        host.first()
            .copied()
            .ok_or_else(|| failed("reading a sum", "no value came back"))
    }
}

impl Backend for CudaBackend {
    type Tensor = CudaTensor;

    fn name(&self) -> String {
        self.name.clone()
    }

    fn upload(&self, host: &Array2<f32>) -> Result<CudaTensor, ComputeError> {
        let (rows, cols) = host.dim();
        let standard = host.as_standard_layout();
        let values = standard
            .as_slice()
            .ok_or_else(|| failed("upload", "the matrix is not contiguous"))?;
        let data = if values.is_empty() {
            self.stream.alloc_zeros::<f32>(1)
        } else {
            self.stream.clone_htod(values)
        }
        .map_err(driver_failed("copying to the device"))?;
        Ok(CudaTensor {
            rows,
            cols,
            data: Arc::new(data),
        })
    }

    fn download(&self, tensor: &CudaTensor) -> Result<Array2<f32>, ComputeError> {
        let data = self.slice(tensor)?;
        if tensor.len() == 0 {
            return Ok(Array2::zeros((tensor.rows, tensor.cols)));
        }
        let values = self
            .stream
            .clone_dtoh(data)
            .map_err(driver_failed("copying from the device"))?;
        Array2::from_shape_vec((tensor.rows, tensor.cols), values)
            .map_err(|e| failed("download", e))
    }

    fn shape(&self, tensor: &CudaTensor) -> (usize, usize) {
        (tensor.rows, tensor.cols)
    }

    fn zeros(&self, rows: usize, cols: usize) -> Result<CudaTensor, ComputeError> {
        let len = rows
            .checked_mul(cols)
            .ok_or_else(|| ComputeError::invalid("matrix size", format!("{rows}x{cols}")))?;
        let data = self
            .stream
            .alloc_zeros::<f32>(len.max(1))
            .map_err(driver_failed("allocating"))?;
        Ok(CudaTensor {
            rows,
            cols,
            data: Arc::new(data),
        })
    }

    fn matmul(
        &self,
        a: &CudaTensor,
        transpose_a: bool,
        b: &CudaTensor,
        transpose_b: bool,
    ) -> Result<CudaTensor, ComputeError> {
        let (m, k) = if transpose_a {
            (a.cols, a.rows)
        } else {
            (a.rows, a.cols)
        };
        let (kb, n) = if transpose_b {
            (b.cols, b.rows)
        } else {
            (b.rows, b.cols)
        };
        if k != kb {
            return Err(ComputeError::Shape {
                op: "matmul",
                detail: format!("{m}x{k} · {kb}x{n}"),
            });
        }
        let (a_data, b_data) = (self.slice(a)?, self.slice(b)?);
        if m == 0 || n == 0 || k == 0 {
            // Nothing to multiply (and cuBLAS refuses leading dimensions of 0).
            return self.zeros(m, n);
        }
        // cuBLAS is column-major, and a row-major r × c matrix is, read column-major, its
        // c × r transpose. So C = op(A) · op(B), row-major, is computed as the column-major
        // Cᵀ = op(B)ᵀ · op(A)ᵀ: B's storage first, A's second, each transposed exactly when
        // asked, every leading dimension the stored row length.
        let op = |t: bool| {
            if t {
                cublas::sys::cublasOperation_t::CUBLAS_OP_T
            } else {
                cublas::sys::cublasOperation_t::CUBLAS_OP_N
            }
        };
        let config = GemmConfig {
            transa: op(transpose_b),
            transb: op(transpose_a),
            m: cublas_dim(n)?,
            n: cublas_dim(m)?,
            k: cublas_dim(k)?,
            alpha: 1.0f32,
            lda: cublas_dim(b.cols)?,
            ldb: cublas_dim(a.cols)?,
            beta: 0.0f32,
            ldc: cublas_dim(n)?,
        };
        let mut c = self.output(m, n)?;
        let c_data = self.slice_mut(&mut c)?;
        let blas = self
            .blas
            .lock()
            .map_err(|_| failed("cublasSgemm", "a thread panicked while using cuBLAS"))?;
        // SAFETY: with the dimensions above cuBLAS reads n·k values of B (b.rows · b.cols),
        // m·k of A (a.rows · a.cols) and writes the m·n of C, all within their buffers; every
        // leading dimension is at least 1 and at least the rows of its column-major view.
        // beta = 0, so C's uninitialised contents are never read. The handle's stream is
        // this backend's, so the product runs after the work that wrote A and B.
        unsafe { blas.gemm(config, b_data, a_data, c_data) }
            .map_err(|e| failed("cublasSgemm", e))?;
        Ok(c)
    }

    fn bias_activation(
        &self,
        z: &mut CudaTensor,
        bias: &CudaTensor,
        activation: Activation,
    ) -> Result<(), ComputeError> {
        same_shape("bias_activation", (1, z.cols), (bias.rows, bias.cols))?;
        let (n, cols) = (z.len() as u64, z.cols as u64);
        if n == 0 {
            return Ok(());
        }
        let act = activation_code(activation);
        let bias = self.slice(bias)?;
        let data = self.slice_mut(z)?;
        let mut launch = self.stream.launch_builder(&self.kernels.bias_activation);
        launch.arg(data).arg(bias).arg(&n).arg(&cols).arg(&act);
        // SAFETY: bias_activation(float* z, const float* bias, u64 n, u64 cols, int act): the
        // arguments match; z holds n values and bias `cols` (checked above).
        unsafe { launch.launch(elementwise(n as usize)) }
            .map_err(driver_failed("bias_activation"))?;
        Ok(())
    }

    fn activation_backward(
        &self,
        grad: &mut CudaTensor,
        output: &CudaTensor,
        activation: Activation,
    ) -> Result<(), ComputeError> {
        same_shape(
            "activation_backward",
            (grad.rows, grad.cols),
            (output.rows, output.cols),
        )?;
        let n = grad.len() as u64;
        if n == 0 {
            return Ok(());
        }
        let act = activation_code(activation);
        let output = self.slice(output)?;
        let data = self.slice_mut(grad)?;
        let mut launch = self
            .stream
            .launch_builder(&self.kernels.activation_backward);
        launch.arg(data).arg(output).arg(&n).arg(&act);
        // SAFETY: activation_backward(float* grad, const float* y, u64 n, int act): the
        // arguments match; both hold n values (same shape, checked above).
        unsafe { launch.launch(elementwise(n as usize)) }
            .map_err(driver_failed("activation_backward"))?;
        Ok(())
    }

    fn sum_rows(&self, tensor: &CudaTensor) -> Result<CudaTensor, ComputeError> {
        self.slice(tensor)?;
        let cols = tensor.cols;
        if tensor.rows == 0 || cols == 0 {
            return self.zeros(1, cols);
        }
        // Each pass sums chunks of SUM_ROWS_CHUNK rows into one row each; repeat until one
        // row is left (two passes up to 65,536 rows). Many blocks share a tall matrix, and
        // the result does not depend on timing (no atomics).
        let mut current = tensor.clone();
        loop {
            let chunks = current.rows.div_ceil(SUM_ROWS_CHUNK);
            let mut out = self.output(chunks, cols)?;
            let (rows, cols64) = (current.rows as u64, cols as u64);
            let input = self.slice(&current)?;
            let data = self.slice_mut(&mut out)?;
            let mut launch = self.stream.launch_builder(&self.kernels.sum_rows_chunked);
            launch.arg(input).arg(data).arg(&rows).arg(&cols64);
            let config = LaunchConfig {
                grid_dim: (
                    cols.div_ceil(32).min(MAX_GRID) as u32,
                    chunks.min(MAX_GRID) as u32,
                    1,
                ),
                block_dim: (BLOCK, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: sum_rows_chunked(const float* x, float* out, u64 rows, u64 cols): the
            // arguments match; x holds rows · cols values and out ceil(rows / 256) · cols.
            // Blocks are 256 threads (32 columns × 8 row lanes), as the kernel requires.
            unsafe { launch.launch(config) }.map_err(driver_failed("sum_rows"))?;
            current = out;
            if current.rows == 1 {
                break;
            }
        }
        Ok(current)
    }

    fn softmax_cross_entropy(
        &self,
        logits: &CudaTensor,
        labels: &[u32],
    ) -> Result<(f32, CudaTensor), ComputeError> {
        let (rows, classes) = (logits.rows, logits.cols);
        // Checked here, not on the device: an out-of-range label is the caller's error,
        // and in a kernel it would be an out-of-bounds read.
        check_labels(rows, classes, labels)?;
        let input = self.slice(logits)?;
        let labels = self
            .stream
            .clone_htod(labels)
            .map_err(driver_failed("copying labels"))?;
        let mut grad = self.output(rows, classes)?;
        let mut row_loss = self.alloc::<f64>(rows)?;
        let inv = 1.0 / rows as f32;
        let (rows64, cols64) = (rows as u64, classes as u64);
        let data = self.slice_mut(&mut grad)?;
        let mut launch = self.stream.launch_builder(&self.kernels.cross_entropy_rows);
        launch
            .arg(input)
            .arg(&labels)
            .arg(data)
            .arg(&mut row_loss)
            .arg(&rows64)
            .arg(&cols64)
            .arg(&inv);
        // SAFETY: cross_entropy_rows(const float* logits, const unsigned* labels, float* grad,
        // double* row_loss, u64 rows, u64 cols, float inv): the arguments match; logits and
        // grad hold rows · cols values, labels and row_loss `rows`, and every label is below
        // cols (checked above).
        unsafe { launch.launch(per_row(rows, classes)) }
            .map_err(driver_failed("softmax_cross_entropy"))?;
        let total = self.finish_sum(&row_loss, rows)?;
        Ok(((total / rows as f64) as f32, grad))
    }

    fn mse(
        &self,
        prediction: &CudaTensor,
        target: &CudaTensor,
    ) -> Result<(f32, CudaTensor), ComputeError> {
        same_shape(
            "mse",
            (prediction.rows, prediction.cols),
            (target.rows, target.cols),
        )?;
        let (p, t) = (self.slice(prediction)?, self.slice(target)?);
        let n = prediction.len();
        if n == 0 {
            return Ok((0.0, self.zeros(prediction.rows, prediction.cols)?));
        }
        // As the CPU: the element count as f32 (exact below 2^24), in f64 for the mean.
        let count = n as f32;
        let blocks = n.div_ceil(BLOCK as usize).min(REDUCE_BLOCKS);
        let mut grad = self.output(prediction.rows, prediction.cols)?;
        let mut partial = self.alloc::<f64>(blocks)?;
        let n64 = n as u64;
        let data = self.slice_mut(&mut grad)?;
        let mut launch = self.stream.launch_builder(&self.kernels.mse_partial);
        launch
            .arg(p)
            .arg(t)
            .arg(data)
            .arg(&n64)
            .arg(&count)
            .arg(&mut partial);
        let config = LaunchConfig {
            grid_dim: (blocks as u32, 1, 1),
            ..elementwise(n)
        };
        // SAFETY: mse_partial(const float* p, const float* t, float* grad, u64 n, float
        // count, double* partial): the arguments match; p, t and grad hold n values and
        // partial one per block of the grid.
        unsafe { launch.launch(config) }.map_err(driver_failed("mse"))?;
        let total = self.finish_sum(&partial, blocks)?;
        Ok(((total / f64::from(count)) as f32, grad))
    }

    fn kl_divergence(
        &self,
        student_logits: &CudaTensor,
        teacher_logits: &CudaTensor,
        temperature: f32,
    ) -> Result<(f32, CudaTensor), ComputeError> {
        let (rows, cols) = (student_logits.rows, student_logits.cols);
        same_shape(
            "kl_divergence",
            (rows, cols),
            (teacher_logits.rows, teacher_logits.cols),
        )?;
        check_temperature(temperature)?;
        let (s, t) = (self.slice(student_logits)?, self.slice(teacher_logits)?);
        if rows == 0 || cols == 0 {
            return Ok((0.0, self.zeros(rows, cols)?));
        }
        let rows_f = rows as f32;
        // d/ds of T²·KL(p‖softmax(s/T)) = T (q − p), then the mean over rows.
        let scale = temperature / rows_f;
        let mut grad = self.output(rows, cols)?;
        let mut row_kl = self.alloc::<f64>(rows)?;
        let (rows64, cols64) = (rows as u64, cols as u64);
        let data = self.slice_mut(&mut grad)?;
        let mut launch = self.stream.launch_builder(&self.kernels.kl_rows);
        launch
            .arg(s)
            .arg(t)
            .arg(data)
            .arg(&mut row_kl)
            .arg(&rows64)
            .arg(&cols64)
            .arg(&temperature)
            .arg(&scale);
        // SAFETY: kl_rows(const float* student, const float* teacher, float* grad, double*
        // row_kl, u64 rows, u64 cols, float temperature, float scale): the arguments match;
        // the three matrices hold rows · cols values (same shape, checked above), row_kl
        // `rows`.
        unsafe { launch.launch(per_row(rows, cols)) }.map_err(driver_failed("kl_divergence"))?;
        let kl = self.finish_sum(&row_kl, rows)?;
        let t2 = f64::from(temperature * temperature);
        Ok(((kl * t2 / f64::from(rows_f)) as f32, grad))
    }

    fn softmax(&self, logits: &CudaTensor, temperature: f32) -> Result<CudaTensor, ComputeError> {
        check_temperature(temperature)?;
        let input = self.slice(logits)?;
        let (rows, cols) = (logits.rows, logits.cols);
        if logits.len() == 0 {
            return self.zeros(rows, cols);
        }
        let mut out = self.output(rows, cols)?;
        let (rows64, cols64) = (rows as u64, cols as u64);
        let data = self.slice_mut(&mut out)?;
        let mut launch = self.stream.launch_builder(&self.kernels.softmax_rows);
        launch
            .arg(input)
            .arg(data)
            .arg(&rows64)
            .arg(&cols64)
            .arg(&temperature);
        // SAFETY: softmax_rows(const float* x, float* out, u64 rows, u64 cols, float
        // temperature): the arguments match; both hold rows · cols values.
        unsafe { launch.launch(per_row(rows, cols)) }.map_err(driver_failed("softmax"))?;
        Ok(out)
    }

    fn sum_squares(&self, tensor: &CudaTensor) -> Result<f32, ComputeError> {
        let input = self.slice(tensor)?;
        let n = tensor.len();
        if n == 0 {
            return Ok(0.0);
        }
        let blocks = n.div_ceil(BLOCK as usize).min(REDUCE_BLOCKS);
        let mut partial = self.alloc::<f64>(blocks)?;
        let n64 = n as u64;
        let mut launch = self.stream.launch_builder(&self.kernels.squares_partial);
        launch.arg(input).arg(&n64).arg(&mut partial);
        let config = LaunchConfig {
            grid_dim: (blocks as u32, 1, 1),
            ..elementwise(n)
        };
        // SAFETY: squares_partial(const float* x, u64 n, double* partial): the arguments
        // match; x holds n values and partial one per block of the grid.
        unsafe { launch.launch(config) }.map_err(driver_failed("sum_squares"))?;
        Ok(self.finish_sum(&partial, blocks)? as f32)
    }

    fn scale(&self, tensor: &mut CudaTensor, s: f32) -> Result<(), ComputeError> {
        let n = tensor.len() as u64;
        let data = self.slice_mut(tensor)?;
        if n == 0 {
            return Ok(());
        }
        let mut launch = self.stream.launch_builder(&self.kernels.scale);
        launch.arg(data).arg(&n).arg(&s);
        // SAFETY: scale(float* x, u64 n, float s): the arguments match; x holds n values.
        unsafe { launch.launch(elementwise(n as usize)) }.map_err(driver_failed("scale"))?;
        Ok(())
    }

    fn add_scaled(&self, y: &mut CudaTensor, a: f32, x: &CudaTensor) -> Result<(), ComputeError> {
        same_shape("add_scaled", (y.rows, y.cols), (x.rows, x.cols))?;
        let n = y.len() as u64;
        let x = self.slice(x)?;
        let data = self.slice_mut(y)?;
        if n == 0 {
            return Ok(());
        }
        let mut launch = self.stream.launch_builder(&self.kernels.add_scaled);
        launch.arg(data).arg(x).arg(&n).arg(&a);
        // SAFETY: add_scaled(float* y, const float* x, u64 n, float a): the arguments
        // match; both hold n values (same shape, checked above).
        unsafe { launch.launch(elementwise(n as usize)) }.map_err(driver_failed("add_scaled"))?;
        Ok(())
    }

    fn adamw_update(
        &self,
        param: &mut CudaTensor,
        grad: &CudaTensor,
        m: &mut CudaTensor,
        v: &mut CudaTensor,
        step: &AdamWStep,
    ) -> Result<(), ComputeError> {
        let shape = (param.rows, param.cols);
        same_shape("adamw_update", shape, (grad.rows, grad.cols))?;
        same_shape("adamw_update", shape, (m.rows, m.cols))?;
        same_shape("adamw_update", shape, (v.rows, v.cols))?;
        let (c1, c2, decay) = step.constants();
        let AdamWStep {
            lr,
            beta1,
            beta2,
            eps,
            ..
        } = *step;
        let n = param.len() as u64;
        let grad = self.slice(grad)?;
        let param = self.slice_mut(param)?;
        let m = self.slice_mut(m)?;
        let v = self.slice_mut(v)?;
        if n == 0 {
            return Ok(());
        }
        let mut launch = self.stream.launch_builder(&self.kernels.adamw);
        launch
            .arg(param)
            .arg(grad)
            .arg(m)
            .arg(v)
            .arg(&n)
            .arg(&lr)
            .arg(&beta1)
            .arg(&beta2)
            .arg(&eps)
            .arg(&c1)
            .arg(&c2)
            .arg(&decay);
        // SAFETY: adamw(float* param, const float* grad, float* m, float* v, u64 n, float lr,
        // float beta1, float beta2, float eps, float c1, float c2, float decay): the
        // arguments match; the four tensors hold n values each (same shape, checked above)
        // and the three written ones are distinct buffers (`slice_mut` unshares them).
        unsafe { launch.launch(elementwise(n as usize)) }.map_err(driver_failed("adamw"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernels compile with NVRTC, to PTX and to machine code for the GPUs of the
    /// machines in use, wherever the library is found, GPU or not (put a CUDA toolkit's lib
    /// folder, or that of the `nvidia-cuda-nvrtc` wheel, on `LD_LIBRARY_PATH`). Elsewhere
    /// this says so and passes.
    #[test]
    fn kernels_compile_with_nvrtc() {
        // SAFETY: as in `missing_library`.
        if !unsafe { nvrtc::sys::is_culib_present() } {
            eprintln!("NVRTC not found: kernel compilation not checked");
            return;
        }
        // Ampere, Hopper (the H100), Blackwell.
        for capability in [(8, 0), (9, 0), (10, 0)] {
            let cubin = panic::catch_unwind(|| compile_cubin(capability)).expect("NVRTC panicked");
            assert!(cubin.is_ok(), "sm_{capability:?}: {cubin:?}");
        }
        let options = CompileOptions {
            options: vec![NVRTC_FMAD.into()],
            ..CompileOptions::default()
        };
        let ptx = panic::catch_unwind(|| nvrtc::compile_ptx_with_opts(KERNELS, options))
            .expect("NVRTC panicked")
            .unwrap_or_else(|e| panic!("the kernels do not compile: {e}"));
        let ptx = ptx.to_src();
        let mut kernels = std::collections::HashMap::new();
        for section in ptx.split(".entry ").skip(1) {
            let name = section.split('(').next().unwrap_or_default();
            kernels.insert(name.to_owned(), section);
        }
        for name in [
            "bias_activation",
            "activation_backward",
            "sum_rows_chunked",
            "softmax_rows",
            "cross_entropy_rows",
            "kl_rows",
            "sum_f64",
            "squares_partial",
            "mse_partial",
            "scale",
            "add_scaled",
            "adamw",
        ] {
            assert!(kernels.contains_key(name), "{name} missing");
        }
        // No contraction into FMAs in the kernels that only add, multiply and divide (the
        // others call the math library, which has its own).
        for name in [
            "activation_backward",
            "mse_partial",
            "scale",
            "add_scaled",
            "adamw",
        ] {
            assert!(!kernels[name].contains("fma."), "an FMA in {name}");
        }
    }

    #[test]
    fn without_a_device_new_fails_with_an_error() {
        if !probe_devices().is_empty() {
            return;
        }
        let e = CudaBackend::new(0).unwrap_err();
        assert!(matches!(e, ComputeError::Backend { .. }), "{e}");
        assert!(!e.is_invalid_input());
    }

    #[test]
    fn launch_shapes_stay_within_limits() {
        for cols in [0, 1, 8, 31, 33, 256, 257, 100_000] {
            let c = per_row(3, cols);
            let threads = c.block_dim.0;
            assert!(threads.is_power_of_two() && (32..=BLOCK).contains(&threads));
        }
        assert_eq!(per_row(10_000_000, 8).grid_dim.0, MAX_GRID as u32);
        assert_eq!(elementwise(0).grid_dim.0, 1);
        assert_eq!(elementwise(257).grid_dim.0, 2);
    }
}
