//! Open the GPU, upload one weight matrix of a GGUF model as-is (quantized), multiply it by
//! a vector on the GPU and check the result against the CPU reference.
//!
//!     cargo run -p kvedge-examples --example gpu_matvec -- models/cache/SmolLM2-135M-Instruct.Q4_1.gguf [TENSOR]

use kvedge_runtime::gguf::GgufFile;
use kvedge_runtime::gpu::{DeviceOptions, GpuContext, GpuMatrix};
use kvedge_runtime::kernels::{check, matvec};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args.next().ok_or("usage: gpu_matvec FILE.gguf [TENSOR]")?;
    let name = args.next().unwrap_or_else(|| "blk.0.attn_q.weight".into());

    let file = GgufFile::open(&path)?;
    let t = file.tensor(&name)?;
    let (ncols, nrows) = (t.n_cols() as usize, t.n_rows() as usize);
    let ctx = GpuContext::new(&DeviceOptions::default())?;
    println!("{name}: {} {nrows}x{ncols} on {}", t.ty, ctx.info.name);

    let w = GpuMatrix::upload(&ctx, &name, t.ty, ncols, nrows, file.tensor_data(t))?;
    let x: Vec<f32> = (0..ncols)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let gx = ctx.upload("x", &x)?;
    let gy = ctx.storage_f32("y", nrows)?;
    let mut enc = ctx.encoder("matvec");
    matvec::record(&ctx, &mut enc, &w, &gx, &gy)?;
    ctx.submit_wait(enc)?;
    let got = ctx.read_f32(&gy, nrows)?;

    let want = matvec::reference(t.ty, file.tensor_data(t), ncols, nrows, &x)?;
    let c = check::compare(&got, &want);
    println!(
        "y[0..4] = {:?}; max normalized error vs CPU {:.2e} (at {})",
        &got[..4.min(nrows)],
        c.max_err,
        c.worst_index
    );
    Ok(())
}
