#!/usr/bin/env bash
# Build KvedgeFFI.xcframework (static library + kvedge.h + module map) for iOS devices
# (arm64) and the simulator (arm64 + x86_64), into target/KvedgeFFI.xcframework. Needs
# macOS with Xcode and rustup; see docs/MOBILE.md.
set -euo pipefail
cd "$(dirname "$0")/.."

[[ "$(uname)" == Darwin ]] || { echo "the iOS build needs macOS with Xcode" >&2; exit 1; }
targets=(aarch64-apple-ios aarch64-apple-ios-sim x86_64-apple-ios)
rustup target add "${targets[@]}"
for t in "${targets[@]}"; do
  cargo build --release -p kvedge-ffi --target "$t"
done

work=target/xcframework
rm -rf "$work" target/KvedgeFFI.xcframework
mkdir -p "$work/headers" "$work/sim"
cp platform/include/kvedge.h platform/ios/module.modulemap "$work/headers/"
lipo -create target/aarch64-apple-ios-sim/release/libkvedge_ffi.a \
  target/x86_64-apple-ios/release/libkvedge_ffi.a -output "$work/sim/libkvedge_ffi.a"
xcodebuild -create-xcframework \
  -library target/aarch64-apple-ios/release/libkvedge_ffi.a -headers "$work/headers" \
  -library "$work/sim/libkvedge_ffi.a" -headers "$work/headers" \
  -output target/KvedgeFFI.xcframework
echo "target/KvedgeFFI.xcframework: add it to the app and link Metal, QuartzCore, Foundation"
