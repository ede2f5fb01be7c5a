//! CPU dequantizers (and the GPU dequantizing gather) against test vectors made by an
//! independent implementation, the PyPI `gguf` package (tools/make_quant_vectors.py),
//! partly from real model tensors.

use kvedge_runtime::gguf::GgufFile;
use kvedge_runtime::gpu::GpuMatrix;
use kvedge_runtime::kernels::check::{assert_close, compare, test_context};
use kvedge_runtime::kernels::embed;
use kvedge_runtime::quant::{dequantize, GgmlType};
use kvedge_tests::data;

fn fixture(ty: GgmlType) -> (GgufFile, Vec<f32>) {
    let f = GgufFile::open(data(&format!("quant/{}.gguf", ty.name()))).unwrap();
    let r = f.tensor("ref").unwrap().clone();
    assert_eq!(r.ty, GgmlType::F32);
    let want: Vec<f32> = bytemuck::pod_collect_to_vec(f.tensor_data(&r));
    (f, want)
}

#[test]
fn cpu_dequantizers_match_gguf_py() {
    for &ty in GgmlType::compute_types() {
        let (f, want) = fixture(ty);
        let q = f.tensor("q").unwrap();
        assert_eq!(q.ty, ty, "fixture type");
        let mut got = vec![0.0f32; q.n_elements as usize];
        dequantize(ty, f.tensor_data(q), &mut got).unwrap();
        let c = compare(&got, &want);
        eprintln!(
            "{ty}: {} values ({}), max normalized error {:.2e}",
            got.len(),
            f.header().get_str("kvedge.test.source").unwrap_or("?"),
            c.max_err
        );
        // Same formulas in f32; only the order of a multiply may differ.
        assert_close(&format!("dequantize {ty}"), &got, &want, 1e-6);
    }
}

#[test]
fn gpu_dequantizers_match_gguf_py() {
    let Some(ctx) = test_context() else { return };
    for &ty in GgmlType::compute_types() {
        let (f, want) = fixture(ty);
        let q = f.tensor("q").unwrap();
        let (ncols, nrows) = (q.n_cols() as usize, q.n_rows() as usize);
        let table = GpuMatrix::upload(ctx, "q", ty, ncols, nrows, f.tensor_data(q)).unwrap();
        let ids: Vec<u32> = (0..nrows as u32).collect();
        let gi = ctx.upload("ids", &ids).unwrap();
        let out = ctx.storage_f32("out", ncols * nrows).unwrap();
        let mut enc = ctx.encoder("test");
        embed::record(ctx, &mut enc, &table, &gi, nrows, &out).unwrap();
        ctx.submit_wait(enc).unwrap();
        let got = ctx.read_f32(&out, want.len()).unwrap();
        assert_close(&format!("GPU dequantize {ty}"), &got, &want, 1e-6);
    }
}
