// A file written under a temporary name and renamed into place only when complete, so readers
// never see a half-written checkpoint. Destroying it uncommitted removes the temporary file.
#pragma once

#include <cstddef>
#include <filesystem>
#include <span>

namespace fireq::io {

class AtomicFile {
 public:
  explicit AtomicFile(const std::filesystem::path& path);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(std::span<const std::byte> bytes);
  void commit();  // fsync, close, rename over `path`

 private:
  std::filesystem::path path_, temp_;
  int fd_ = -1;
  size_t written_ = 0;
};

}  // namespace fireq::io
