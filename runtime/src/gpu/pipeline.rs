//! Compute pipelines, compiled once and cached by a readable key
//! (`matvec.Q4_K.wg64`), which is also the wgpu label. A shader is assembled from WGSL
//! pieces (shared includes first, then the kernel) plus a few generated lines for the
//! variant; geometry that varies goes through WGSL `override` constants, which are part of
//! the key. Compile errors are caught in an error scope and returned as values.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::GpuContext;
use crate::{Error, Result};

/// The WGSL of one pipeline variant: shared pieces, the kernel and any generated lines
/// (e.g. which dequantizer the kernel calls), already concatenated.
pub struct ShaderSource {
    pub code: String,
    /// WGSL `override` constants.
    pub constants: Vec<(&'static str, f64)>,
}

#[derive(Default)]
pub struct PipelineCache {
    map: Mutex<HashMap<String, Arc<wgpu::ComputePipeline>>>,
}

impl PipelineCache {
    pub fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn lock_err() -> Error {
    Error::Gpu {
        what: "pipeline cache".into(),
        message: "poisoned lock".into(),
    }
}

impl GpuContext {
    /// The pipeline for `key`, built from `source` on first use.
    pub fn pipeline(
        &self,
        key: &str,
        source: impl FnOnce() -> ShaderSource,
    ) -> Result<Arc<wgpu::ComputePipeline>> {
        if let Some(p) = self
            .pipelines()
            .map
            .lock()
            .map_err(|_| lock_err())?
            .get(key)
        {
            return Ok(p.clone());
        }
        let src = source();
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(key),
                source: wgpu::ShaderSource::Wgsl(src.code.into()),
            });
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(key),
                layout: None,
                module: &module,
                entry_point: Some("main"),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &src.constants,
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu {
                what: format!("compiling pipeline '{key}'"),
                message: e.to_string(),
            });
        }
        let p = Arc::new(pipeline);
        self.pipelines()
            .map
            .lock()
            .map_err(|_| lock_err())?
            .insert(key.to_string(), p.clone());
        Ok(p)
    }

    /// A bind group for group 0 of `pipeline` with `buffers` at bindings 0, 1, 2, ...
    pub fn bind(
        &self,
        label: &str,
        pipeline: &wgpu::ComputePipeline,
        buffers: &[&wgpu::Buffer],
    ) -> wgpu::BindGroup {
        let layout = pipeline.get_bind_group_layout(0);
        let entries: Vec<wgpu::BindGroupEntry> = buffers
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: b.as_entire_binding(),
            })
            .collect();
        self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(label),
            layout: &layout,
            entries: &entries,
        })
    }

    /// Record one dispatch of `pipeline` over `groups` workgroups (split into a 2-D grid).
    /// Returns the grid's x extent, which the shader needs to linearize the group id.
    pub fn dispatch(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        label: &str,
        pipeline: &wgpu::ComputePipeline,
        bind_group: &wgpu::BindGroup,
        groups: (u32, u32),
    ) {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some(label),
            timestamp_writes: None,
        });
        pass.set_pipeline(pipeline);
        pass.set_bind_group(0, bind_group, &[]);
        pass.dispatch_workgroups(groups.0, groups.1, 1);
    }
}
