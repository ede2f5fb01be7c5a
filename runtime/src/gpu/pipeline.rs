//! Compute pipelines, compiled once and cached by a readable key (`matvec.Q4_K`, plus
//! `.NAME=VALUE` for each WGSL `override` constant), which is also the wgpu label. A
//! shader is assembled by its kernel module from WGSL pieces (shared includes first, then
//! the kernel) plus a few generated lines for the type variant. Compile errors are caught
//! in an error scope and returned as values.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::GpuContext;
use crate::{Error, Result};

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
    /// The pipeline of shader variant `name` (e.g. `matvec.Q4_K`) with WGSL `override`
    /// `constants`, compiled from `code()` on first use. The cache key (also the wgpu
    /// label) is the name followed by the constants: `matvec.Q4_K.WG=64`.
    pub fn pipeline(
        &self,
        name: &str,
        constants: &[(&str, f64)],
        code: impl FnOnce() -> String,
    ) -> Result<Arc<wgpu::ComputePipeline>> {
        let mut key = name.to_string();
        for (k, v) in constants {
            key.push_str(&format!(".{k}={v}"));
        }
        let key = key.as_str();
        if let Some(p) = self
            .pipelines()
            .map
            .lock()
            .map_err(|_| lock_err())?
            .get(key)
        {
            return Ok(p.clone());
        }
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(key),
                source: wgpu::ShaderSource::Wgsl(code().into()),
            });
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(key),
                layout: None,
                module: &module,
                entry_point: Some("main"),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants,
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
        // While a profile runs, the pass records its start and end ticks (`profile`).
        let mut profiler = self
            .profiling
            .load(std::sync::atomic::Ordering::Acquire)
            .then(|| self.profiler.lock().ok())
            .flatten();
        let timed = profiler
            .as_mut()
            .and_then(|p| p.as_mut())
            .and_then(|p| p.next_pass(label));
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some(label),
            timestamp_writes: timed.map(|(set, i)| wgpu::ComputePassTimestampWrites {
                query_set: set,
                beginning_of_pass_write_index: Some(i),
                end_of_pass_write_index: Some(i + 1),
            }),
        });
        pass.set_pipeline(pipeline);
        pass.set_bind_group(0, bind_group, &[]);
        pass.dispatch_workgroups(groups.0, groups.1, 1);
    }
}

#[cfg(test)]
mod tests {
    use crate::kernels::check::test_context;

    const FILL: &str = "override VALUE: f32 = 1.0;
@group(0) @binding(0) var<storage, read_write> out: array<f32>;
@compute @workgroup_size(1)
fn main(@builtin(global_invocation_id) id: vec3<u32>) { out[id.x] = VALUE; }";

    #[test]
    fn pipelines_are_cached_by_name_and_constants() {
        let Some(ctx) = test_context() else { return };
        let a = ctx
            .pipeline("test.fill", &[("VALUE", 3.0)], || FILL.into())
            .unwrap();
        let b = ctx
            .pipeline("test.fill", &[("VALUE", 3.0)], || unreachable!())
            .unwrap();
        assert!(
            std::sync::Arc::ptr_eq(&a, &b),
            "second lookup must hit the cache"
        );
        let c = ctx
            .pipeline("test.fill", &[("VALUE", -2.5)], || FILL.into())
            .unwrap();
        assert!(!std::sync::Arc::ptr_eq(&a, &c));
        for (p, want) in [(&a, 3.0f32), (&c, -2.5)] {
            let out = ctx.storage_f32("out", 3).unwrap();
            let bg = ctx.bind("fill", p, &[&out]);
            let mut enc = ctx.encoder("test");
            ctx.dispatch(&mut enc, "fill", p, &bg, (3, 1));
            ctx.submit_wait(enc).unwrap();
            assert_eq!(ctx.read_f32(&out, 3).unwrap(), vec![want; 3]);
        }
    }

    #[test]
    fn invalid_wgsl_is_an_error_not_a_panic() {
        let Some(ctx) = test_context() else { return };
        let e = ctx
            .pipeline("test.bad", &[], || "fn main( {".into())
            .unwrap_err();
        assert!(
            e.to_string().contains("compiling pipeline 'test.bad'"),
            "{e}"
        );
        ctx.check().unwrap();
    }
}
