//! Real models fetched by models/fetch.sh: hyperparameters read from their metadata, the
//! tensor check, and GPU kernels on real quantized tensors against the CPU reference.
//! Each test skips (saying so) when its model is absent, unless KVEDGE_REQUIRE_MODELS
//! names it.

use kvedge_models::{check_tensors, Arch, HParams};
use kvedge_runtime::gguf::GgufFile;
use kvedge_runtime::gpu::GpuMatrix;
use kvedge_runtime::kernels::check::{assert_close, test_context};
use kvedge_runtime::kernels::{embed, matvec};
use kvedge_runtime::quant::GgmlType;
use kvedge_runtime::rng::SplitMix64;
use kvedge_tests::{model, QWEN25_15B, SMOLLM2};

#[test]
fn smollm2_hyperparameters() {
    let Some(path) = model(SMOLLM2) else { return };
    let f = GgufFile::open(path).unwrap();
    let hp = HParams::from_gguf(&f).unwrap();
    assert_eq!(hp.arch, Arch::Llama);
    assert_eq!(
        (hp.n_layers, hp.n_embd, hp.n_heads, hp.n_kv_heads),
        (30, 576, 9, 3)
    );
    assert_eq!((hp.head_dim, hp.n_ff, hp.n_vocab), (64, 1536, 49152));
    assert_eq!(hp.tokenizer.model, "gpt2");
    assert_eq!(hp.tokenizer.pre.as_deref(), Some("smollm"));
    // 2 (K, V) x 30 layers x 3 KV heads x 64 dims x 2 bytes
    assert_eq!(hp.kv_bytes_per_token(2.0), 23040.0);
    assert!(
        check_tensors(&f, &hp).unwrap(),
        "SmolLM2 ties its output matrix"
    );
}

#[test]
fn qwen25_hyperparameters() {
    let Some(path) = model(QWEN25_15B) else {
        return;
    };
    let f = GgufFile::open(path).unwrap();
    let hp = HParams::from_gguf(&f).unwrap();
    assert_eq!(hp.arch, Arch::Qwen2);
    assert_eq!(
        (hp.n_layers, hp.n_embd, hp.n_heads, hp.n_kv_heads),
        (28, 1536, 12, 2)
    );
    assert_eq!((hp.head_dim, hp.n_ff, hp.n_vocab), (128, 8960, 151936));
    assert_eq!(hp.kv_bytes_per_token(2.0), 28672.0);
    check_tensors(&f, &hp).unwrap();
}

#[test]
fn smollm2_real_tensors_on_the_gpu() {
    let Some(path) = model(SMOLLM2) else { return };
    let Some(ctx) = test_context() else { return };
    let f = GgufFile::open(path).unwrap();
    let mut rng = SplitMix64::new(5);

    // matvec on a real Q4_1 projection.
    let t = f.tensor("blk.0.ffn_down.weight").unwrap();
    assert_eq!(t.ty, GgmlType::Q4_1);
    let (ncols, nrows) = (t.n_cols() as usize, t.n_rows() as usize);
    let x = rng.vec_f32(ncols, -1.0, 1.0);
    let want = matvec::reference(t.ty, f.tensor_data(t), ncols, nrows, &x).unwrap();
    let w = GpuMatrix::upload(ctx, &t.name, t.ty, ncols, nrows, f.tensor_data(t)).unwrap();
    let (gx, gy) = (
        ctx.upload("x", &x).unwrap(),
        ctx.storage_f32("y", nrows).unwrap(),
    );
    let mut enc = ctx.encoder("test");
    matvec::record(ctx, &mut enc, &w, &gx, &gy).unwrap();
    ctx.submit_wait(enc).unwrap();
    assert_close(
        "matvec blk.0.ffn_down",
        &ctx.read_f32(&gy, nrows).unwrap(),
        &want,
        1e-4,
    );

    // Embedding rows of the real Q8_0 table.
    let t = f.tensor("token_embd.weight").unwrap();
    let (ncols, nrows) = (t.n_cols() as usize, t.n_rows() as usize);
    let ids: Vec<u32> = vec![0, 1, 2, 9000, 49151];
    let want = embed::reference(t.ty, f.tensor_data(t), ncols, nrows, &ids).unwrap();
    let table = GpuMatrix::upload(ctx, &t.name, t.ty, ncols, nrows, f.tensor_data(t)).unwrap();
    let gi = ctx.upload("ids", &ids).unwrap();
    let out = ctx.storage_f32("out", ids.len() * ncols).unwrap();
    let mut enc = ctx.encoder("test");
    embed::record(ctx, &mut enc, &table, &gi, ids.len(), &out).unwrap();
    ctx.submit_wait(enc).unwrap();
    assert_close(
        "embed token_embd",
        &ctx.read_f32(&out, want.len()).unwrap(),
        &want,
        1e-6,
    );
}
