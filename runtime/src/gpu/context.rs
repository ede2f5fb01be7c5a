//! Device creation. The adapter is chosen from the backends in `WGPU_BACKEND` (all by
//! default), preferring discrete over integrated over software GPUs, or by index
//! (`KVEDGE_ADAPTER` / [`DeviceOptions::adapter`]). The device is opened with the adapter's
//! own limits (wgpu's defaults would cap bindings at 128 MiB even on desktop GPUs) and
//! with the optional features kvedge can use when the adapter has them (SHADER_F16,
//! SUBGROUP, TIMESTAMP_QUERY); kernels keep a path without each of them.

use std::sync::{Arc, Mutex};

use crate::gpu::pipeline::PipelineCache;
use crate::{Error, Result};

const NO_ADAPTER_HINT: &str = "kvedge needs a GPU adapter (Vulkan, Metal, DX12 or GL). \
On Linux without a GPU, install Mesa's software Vulkan driver: \
`apt-get install mesa-vulkan-drivers libvulkan1` (Debian/Ubuntu). \
Check what is visible with `kvedge devices`; choose a backend with WGPU_BACKEND=vulkan|metal|dx12|gl.";

/// How to open the device.
#[derive(Clone, Debug)]
pub struct DeviceOptions {
    /// Adapter index as listed by `kvedge devices`; `None` picks the best one (or
    /// `KVEDGE_ADAPTER` when set).
    pub adapter: Option<usize>,
    /// Use SHADER_F16 when the adapter has it.
    pub allow_f16: bool,
    /// Use SUBGROUP operations when the adapter has them.
    pub allow_subgroup: bool,
    /// Cap the size of one storage binding below the adapter's limit (phones, tests of the
    /// chunked path).
    pub max_binding_bytes: Option<u64>,
}

impl Default for DeviceOptions {
    fn default() -> Self {
        Self {
            adapter: None,
            allow_f16: true,
            allow_subgroup: true,
            max_binding_bytes: None,
        }
    }
}

/// Optional features in use on the opened device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GpuFeatures {
    pub shader_f16: bool,
    pub subgroup: bool,
    pub timestamp_query: bool,
}

/// What `kvedge devices` prints about an adapter.
#[derive(Clone, Debug)]
pub struct AdapterSummary {
    pub index: usize,
    pub info: wgpu::AdapterInfo,
    pub features: wgpu::Features,
    pub limits: wgpu::Limits,
}

fn instance() -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    if std::env::var_os("WGPU_BACKEND").is_none() {
        desc.backends = wgpu::Backends::all();
    }
    wgpu::Instance::new(desc)
}

fn backends_desc() -> String {
    std::env::var("WGPU_BACKEND").unwrap_or_else(|_| "all (WGPU_BACKEND unset)".into())
}

fn rank(t: wgpu::DeviceType) -> u32 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    }
}

fn adapters(instance: &wgpu::Instance) -> Vec<wgpu::Adapter> {
    let mut list = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
    // Stable order: by backend then name, so indices mean the same thing across runs.
    list.sort_by_key(|a| {
        let i = a.get_info();
        (i.backend as u32, i.name.clone(), i.device)
    });
    list
}

/// Every adapter wgpu can see with the current `WGPU_BACKEND`.
pub fn list_adapters() -> Vec<AdapterSummary> {
    adapters(&instance())
        .into_iter()
        .enumerate()
        .map(|(index, a)| AdapterSummary {
            index,
            info: a.get_info(),
            features: a.features(),
            limits: a.limits(),
        })
        .collect()
}

/// An opened device with its queue, limits, features and pipeline cache.
pub struct GpuContext {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    pub features: GpuFeatures,
    max_binding: u64,
    pipelines: PipelineCache,
    errors: Arc<Mutex<Vec<String>>>,
    /// Bytes of every storage buffer created through this context (never decremented).
    created: std::sync::atomic::AtomicU64,
    /// The running per-kernel profile, if one was started (`profile`).
    pub(crate) profiler: Mutex<Option<super::profile::Profiler>>,
    /// Whether `profiler` holds one, so that a dispatch takes its lock only then.
    pub(crate) profiling: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for GpuContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuContext")
            .field("adapter", &self.info.name)
            .field("backend", &self.info.backend)
            .field("features", &self.features)
            .field("max_binding", &self.max_binding)
            .finish()
    }
}

impl GpuContext {
    pub fn new(opts: &DeviceOptions) -> Result<Self> {
        let instance = instance();
        let mut list = adapters(&instance);
        if list.is_empty() {
            return Err(Error::NoAdapter {
                backends: backends_desc(),
                hint: NO_ADAPTER_HINT.into(),
            });
        }
        let env_index = match std::env::var("KVEDGE_ADAPTER") {
            Ok(s) => Some(s.trim().parse::<usize>().map_err(|_| {
                Error::InvalidArgument(format!(
                    "KVEDGE_ADAPTER must be an adapter index, got '{s}'"
                ))
            })?),
            Err(_) => None,
        };
        let index = match opts.adapter.or(env_index) {
            Some(i) if i >= list.len() => {
                return Err(Error::AdapterIndex {
                    index: i,
                    count: list.len(),
                })
            }
            Some(i) => i,
            None => (0..list.len())
                .min_by_key(|&i| rank(list[i].get_info().device_type))
                .unwrap_or(0),
        };
        let adapter = list.swap_remove(index);
        let info = adapter.get_info();
        let limits = adapter.limits();
        let available = adapter.features();

        let mut wanted = wgpu::Features::empty();
        if opts.allow_f16 {
            wanted |= wgpu::Features::SHADER_F16;
        }
        if opts.allow_subgroup {
            wanted |= wgpu::Features::SUBGROUP;
        }
        wanted |= wgpu::Features::TIMESTAMP_QUERY;
        let required = wanted & available;

        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("kvedge"),
            required_features: required,
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| Error::RequestDevice {
            adapter: info.name.clone(),
            message: e.to_string(),
        })?;

        // wgpu's default handler panics on an uncaptured error; record it instead and let
        // `check` turn it into an error value.
        let errors = Arc::new(Mutex::new(Vec::new()));
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            log::error!("wgpu: {e}");
            if let Ok(mut v) = sink.lock() {
                v.push(e.to_string());
            }
        }));

        let adapter_binding =
            (limits.max_storage_buffer_binding_size as u64).min(limits.max_buffer_size);
        let max_binding = opts
            .max_binding_bytes
            .map_or(adapter_binding, |cap| cap.min(adapter_binding))
            // Kernels address bytes with u32.
            .min(u32::MAX as u64 & !3);
        log::info!(
            "GPU: {} ({:?}, {:?}), max binding {} bytes, features {:?}",
            info.name,
            info.backend,
            info.device_type,
            max_binding,
            required
        );
        Ok(Self {
            pipelines: PipelineCache::default(),
            features: GpuFeatures {
                shader_f16: required.contains(wgpu::Features::SHADER_F16),
                subgroup: required.contains(wgpu::Features::SUBGROUP),
                timestamp_query: required.contains(wgpu::Features::TIMESTAMP_QUERY),
            },
            device,
            queue,
            info,
            limits,
            max_binding,
            errors,
            created: Default::default(),
            profiler: Mutex::new(None),
            profiling: Default::default(),
        })
    }

    /// Largest storage binding kernels may use, in bytes.
    pub fn max_binding(&self) -> u64 {
        self.max_binding
    }

    pub fn pipelines(&self) -> &PipelineCache {
        &self.pipelines
    }

    /// Max workgroups per dispatch dimension.
    pub fn max_groups(&self) -> u32 {
        self.limits.max_compute_workgroups_per_dimension
    }

    /// Return the first uncaptured device error since the last check, if any.
    pub fn check(&self) -> Result<()> {
        let mut v = self.errors.lock().map_err(|_| Error::Gpu {
            what: "error log".into(),
            message: "poisoned lock".into(),
        })?;
        if v.is_empty() {
            Ok(())
        } else {
            let message = v.join("; ");
            v.clear();
            Err(Error::Gpu {
                what: "device error".into(),
                message,
            })
        }
    }

    /// Block until all submitted work is done.
    pub fn wait(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu {
                what: "poll".into(),
                message: e.to_string(),
            })?;
        self.check()
    }

    pub fn encoder(&self, label: &str) -> wgpu::CommandEncoder {
        self.device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(label) })
    }

    /// Submit an encoder and wait for it.
    pub fn submit_wait(&self, encoder: wgpu::CommandEncoder) -> Result<()> {
        self.queue.submit([encoder.finish()]);
        self.wait()
    }

    fn storage_usage() -> wgpu::BufferUsages {
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST
    }

    fn check_size(&self, what: &str, bytes: u64) -> Result<()> {
        if bytes > self.max_binding {
            return Err(Error::TooLarge {
                what: what.into(),
                bytes,
                limit: self.max_binding,
                limit_name: "max_storage_buffer_binding_size",
            });
        }
        Ok(())
    }

    /// Bytes of all storage buffers created through this context so far, dropped ones
    /// included: what weights, KV caches and scratch asked for, for checking allocations
    /// (a session that streams within its budget creates nothing after it starts).
    pub fn storage_bytes_created(&self) -> u64 {
        self.created.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn count(&self, bytes: u64) {
        self.created
            .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// A zeroed storage buffer of `len` f32 values.
    pub fn storage_f32(&self, label: &str, len: usize) -> Result<wgpu::Buffer> {
        let bytes = (len.max(1) * 4) as u64;
        self.check_size(label, bytes)?;
        self.count(bytes);
        Ok(self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes,
            usage: Self::storage_usage(),
            mapped_at_creation: false,
        }))
    }

    /// A storage buffer holding `data` (any plain-old-data slice), padded to 4 bytes.
    pub fn upload<T: bytemuck::Pod>(&self, label: &str, data: &[T]) -> Result<wgpu::Buffer> {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        self.upload_bytes(label, bytes)
    }

    /// A storage buffer holding `bytes`, padded with zeros to a multiple of 4.
    pub fn upload_bytes(&self, label: &str, bytes: &[u8]) -> Result<wgpu::Buffer> {
        let size = (bytes.len().max(4) as u64).div_ceil(4) * 4;
        self.check_size(label, size)?;
        self.count(size);
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage: Self::storage_usage(),
            mapped_at_creation: true,
        });
        write_mapped(&buffer, bytes)?;
        Ok(buffer)
    }

    /// A uniform buffer holding one params struct.
    pub fn uniform<T: bytemuck::Pod>(&self, label: &str, params: &T) -> wgpu::Buffer {
        let bytes = bytemuck::bytes_of(params);
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: (bytes.len() as u64).div_ceil(16) * 16,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: true,
        });
        // A freshly created mapped buffer of the right size always maps.
        if let Err(e) = write_mapped(&buffer, bytes) {
            log::error!("uniform '{label}': {e}");
        }
        buffer
    }

    /// Copy `len` f32 values out of a storage buffer (waits for the GPU).
    pub fn read_f32(&self, buffer: &wgpu::Buffer, len: usize) -> Result<Vec<f32>> {
        self.read_pod(buffer, len)
    }

    /// Copy the first `len` values of type `T` of a COPY_SRC buffer back to the host.
    pub fn read_pod<T: bytemuck::Pod>(&self, buffer: &wgpu::Buffer, len: usize) -> Result<Vec<T>> {
        let bytes = (len * std::mem::size_of::<T>()) as u64;
        if bytes > buffer.size() {
            return Err(Error::ShapeMismatch {
                what: "readback: buffer bytes".into(),
                expected: bytes as usize,
                got: buffer.size() as usize,
            });
        }
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: bytes.max(4),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = self.encoder("readback");
        enc.copy_buffer_to_buffer(buffer, 0, &staging, 0, bytes.max(4).min(buffer.size()));
        self.queue.submit([enc.finish()]);
        let (tx, rx) = std::sync::mpsc::channel();
        staging.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.wait()?;
        rx.recv()
            .map_err(|e| Error::Gpu {
                what: "readback".into(),
                message: e.to_string(),
            })?
            .map_err(|e| Error::Gpu {
                what: "readback map".into(),
                message: e.to_string(),
            })?;
        let out = {
            let view = staging
                .slice(..)
                .get_mapped_range()
                .map_err(|e| Error::Gpu {
                    what: "readback view".into(),
                    message: e.to_string(),
                })?;
            bytemuck::pod_collect_to_vec::<u8, T>(&view[..bytes as usize])
        };
        staging.unmap();
        Ok(out)
    }
}

/// Fill a buffer created with `mapped_at_creation`, zero-padding `bytes` to its size, and
/// unmap it.
fn write_mapped(buffer: &wgpu::Buffer, bytes: &[u8]) -> Result<()> {
    {
        let mut view = buffer
            .slice(..)
            .get_mapped_range_mut()
            .map_err(|e| Error::Gpu {
                what: "mapping a new buffer".into(),
                message: e.to_string(),
            })?;
        if view.len() == bytes.len() {
            view.copy_from_slice(bytes);
        } else {
            let mut padded = bytes.to_vec();
            padded.resize(view.len(), 0);
            view.copy_from_slice(&padded);
        }
    }
    buffer.unmap();
    Ok(())
}
