#pragma once
/// The xfer version, recorded in every checkpoint and result. Keep in step with project() in CMakeLists.txt.
namespace xfer {
inline constexpr const char* kVersion = "0.1.0";
}  // namespace xfer
