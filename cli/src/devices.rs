//! `kvedge devices`.

use kvedge_runtime::gpu::list_adapters;
use kvedge_runtime::wgpu;

pub fn run() -> Result<(), Box<dyn std::error::Error>> {
    let list = list_adapters();
    if list.is_empty() {
        return Err(Box::new(kvedge_runtime::Error::NoAdapter {
            backends: std::env::var("WGPU_BACKEND").unwrap_or_else(|_| "all".into()),
            hint: "On Linux without a GPU: apt-get install mesa-vulkan-drivers libvulkan1".into(),
        }));
    }
    for a in list {
        let i = &a.info;
        println!(
            "[{}] {} ({:?}, {:?})",
            a.index, i.name, i.backend, i.device_type
        );
        println!("    driver: {} {}", i.driver, i.driver_info);
        let f = a.features;
        println!(
            "    features: shader_f16={} subgroup={} timestamp_query={}",
            f.contains(wgpu::Features::SHADER_F16),
            f.contains(wgpu::Features::SUBGROUP),
            f.contains(wgpu::Features::TIMESTAMP_QUERY)
        );
        let l = &a.limits;
        println!(
            "    limits: max_buffer_size={} max_storage_buffer_binding_size={} \
             max_compute_workgroup_storage_size={} max_compute_invocations_per_workgroup={} \
             max_compute_workgroups_per_dimension={}",
            l.max_buffer_size,
            l.max_storage_buffer_binding_size,
            l.max_compute_workgroup_storage_size,
            l.max_compute_invocations_per_workgroup,
            l.max_compute_workgroups_per_dimension
        );
    }
    Ok(())
}
