#!/usr/bin/env bash
# Build kvedge for Android: libkvedge_ffi.so (cargo-ndk) and the JNI glue libkvedge_jni.so
# for arm64-v8a and x86_64, into platform/android/jniLibs/<abi>/ (copy that folder into an
# app's src/main/jniLibs, and platform/android/kotlin into its sources). Needs the Android
# NDK (ANDROID_NDK_HOME), rustup and cargo-ndk; see docs/MOBILE.md.
set -euo pipefail
cd "$(dirname "$0")/.."

API=${ANDROID_API:-26}
: "${ANDROID_NDK_HOME:?set ANDROID_NDK_HOME to the Android NDK (r26 or newer)}"
command -v cargo-ndk >/dev/null || { echo "cargo-ndk missing: cargo install cargo-ndk" >&2; exit 1; }
rustup target add aarch64-linux-android x86_64-linux-android

out=platform/android/jniLibs
cargo ndk --platform "$API" -t arm64-v8a -t x86_64 -o "$out" build --release -p kvedge-ffi

host=$(ls "$ANDROID_NDK_HOME/toolchains/llvm/prebuilt")
for pair in arm64-v8a:aarch64-linux-android x86_64:x86_64-linux-android; do
  abi=${pair%%:*} triple=${pair#*:}
  "$ANDROID_NDK_HOME/toolchains/llvm/prebuilt/$host/bin/${triple}${API}-clang" \
    -shared -fPIC -O2 -Wall -Wextra -Werror -Iplatform/include \
    platform/android/jni/kvedge_jni.c -L"$out/$abi" -lkvedge_ffi \
    -o "$out/$abi/libkvedge_jni.so"
done
ls -l "$out"/*/
