#include <cstring>

#include <nlohmann/json.hpp>

#include "fireq/numerics.h"
#include "fireq/safetensors.h"
#include "test_util.h"

namespace fireq {
namespace {

using fireq::testing::error_of;
using fireq::testing::random_bytes;
using fireq::testing::read_bytes;
using fireq::testing::rng;
using fireq::testing::write_bytes;
using ::testing::HasSubstr;

constexpr DType kAllDTypes[] = {DType::F32, DType::F16,     DType::BF16, DType::F8_E4M3, DType::F8_E5M2,
                                DType::I8,  DType::U8,      DType::I32,  DType::I64};

struct OwnedTensor {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  std::vector<std::byte> bytes;

  TensorToWrite view() const { return {name, dtype, shape, bytes}; }
};

OwnedTensor random_tensor(const std::string& name, DType dtype, std::vector<int64_t> shape) {
  int64_t n = 1;
  for (const int64_t d : shape) n *= d;
  return {name, dtype, std::move(shape), random_bytes(static_cast<size_t>(n) * dtype_size(dtype))};
}

std::vector<TensorToWrite> views(const std::vector<OwnedTensor>& tensors) {
  std::vector<TensorToWrite> out;
  for (const OwnedTensor& t : tensors) out.push_back(t.view());
  return out;
}

void expect_same(const OwnedTensor& expected, const TensorView& actual) {
  EXPECT_EQ(actual.name, expected.name);
  EXPECT_EQ(actual.dtype, expected.dtype) << expected.name;
  EXPECT_EQ(actual.shape, expected.shape) << expected.name;
  ASSERT_EQ(actual.data.size(), expected.bytes.size()) << expected.name;
  EXPECT_EQ(std::memcmp(actual.data.data(), expected.bytes.data(), expected.bytes.size()), 0) << expected.name;
}

// A safetensors file from a raw header text and data, for building corrupt files.
std::string raw_file(const std::string& header, const std::string& data, uint64_t header_length) {
  std::string bytes(8, '\0');
  std::memcpy(bytes.data(), &header_length, 8);
  return bytes + header + data;
}
std::string raw_file(const std::string& header, const std::string& data) {
  return raw_file(header, data, header.size());
}

class Safetensors : public fireq::testing::TempDirTest {
 protected:
  // Writes a corrupt file and returns the reader's error message.
  std::string open_error(const std::string& file_bytes) {
    write_bytes(path("bad.safetensors"), file_bytes);
    return error_of([&] { SafetensorsFile file(path("bad.safetensors")); });
  }
  void expect_names_file(const std::string& message) {
    EXPECT_THAT(message, HasSubstr(path("bad.safetensors").string()));
  }
};

TEST_F(Safetensors, RoundTripsEveryDtypeShapeAndMetadata) {
  std::vector<OwnedTensor> tensors;
  std::uniform_int_distribution<int64_t> dim(1, 13);
  for (const DType dtype : kAllDTypes) {
    const std::string name = "layer." + std::string(dtype_name(dtype));
    tensors.push_back(random_tensor(name + ".matrix", dtype, {dim(rng()), dim(rng())}));
    tensors.push_back(random_tensor(name + ".vector", dtype, {dim(rng())}));
    tensors.push_back(random_tensor(name + ".scalar", dtype, {}));
    tensors.push_back(random_tensor(name + ".3d", dtype, {dim(rng()), 1, dim(rng())}));
  }
  tensors.push_back(random_tensor("empty", DType::BF16, {0, 4}));
  const std::map<std::string, std::string> metadata = {{"format", "pt"}, {"fireq.recipe", "{\"group\": 128}"}};
  write_safetensors(path("m.safetensors"), views(tensors), metadata);

  const SafetensorsFile file(path("m.safetensors"));
  EXPECT_EQ(file.metadata(), metadata);
  ASSERT_EQ(file.tensors().size(), tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    expect_same(tensors[i], file.tensors()[i]);  // file order == write order
    expect_same(tensors[i], file.at(tensors[i].name));
  }
  uint64_t header_length;
  std::memcpy(&header_length, read_bytes(path("m.safetensors")).data(), 8);
  EXPECT_EQ((8 + header_length) % 8, 0u) << "data must start 8-byte aligned";
  EXPECT_EQ(file.find("absent"), nullptr);
  EXPECT_THAT(error_of([&] { file.at("absent"); }), HasSubstr("absent"));
}

TEST_F(Safetensors, DecodesFloatDtypesThroughTheNumericsHeader) {
  for (const DType dtype : {DType::F32, DType::F16, DType::BF16, DType::F8_E4M3, DType::F8_E5M2}) {
    const OwnedTensor t = random_tensor("t", dtype, {37});
    write_safetensors(path("f.safetensors"), std::vector{t.view()});
    const SafetensorsFile file(path("f.safetensors"));
    const std::vector<float> values = tensor_to_float(file.at("t"));
    for (size_t i = 0; i < values.size(); ++i) {
      const std::byte* p = t.bytes.data() + i * dtype_size(dtype);
      uint16_t u16;
      std::memcpy(&u16, p, 2);
      float expected;
      switch (dtype) {
        case DType::F32: std::memcpy(&expected, p, 4); break;
        case DType::F16: expected = f16_to_float(u16); break;
        case DType::BF16: expected = bf16_to_float(u16); break;
        case DType::F8_E4M3: expected = fp8_e4m3_to_float(static_cast<uint8_t>(*p)); break;
        default: expected = fp8_e5m2_to_float(static_cast<uint8_t>(*p)); break;
      }
      EXPECT_EQ(float_bits(values[i]), float_bits(expected)) << dtype_name(dtype) << " element " << i;
    }
  }
  const OwnedTensor ints = random_tensor("ints", DType::I32, {3});
  write_safetensors(path("i.safetensors"), std::vector{ints.view()});
  const SafetensorsFile file(path("i.safetensors"));
  EXPECT_THAT(error_of([&] { tensor_to_float(file.at("ints")); }), HasSubstr("not a float type"));
}

TEST_F(Safetensors, WriterIsAtomicAndRejectsBadInput) {
  const OwnedTensor good = random_tensor("w", DType::F32, {4, 4});
  write_safetensors(path("m.safetensors"), std::vector{good.view()});
  const std::string before = read_bytes(path("m.safetensors"));

  OwnedTensor short_data = random_tensor("w", DType::F32, {4, 4});
  short_data.bytes.resize(10);
  EXPECT_THAT(error_of([&] { write_safetensors(path("m.safetensors"), std::vector{short_data.view()}); }),
              HasSubstr("needs 64 bytes but 10 were given"));
  EXPECT_THAT(error_of([&] { write_safetensors(path("m.safetensors"), std::vector{good.view(), good.view()}); }),
              HasSubstr("given twice"));
  EXPECT_EQ(read_bytes(path("m.safetensors")), before) << "a failed write must leave the old file";
  for (const auto& entry : std::filesystem::directory_iterator(dir_))
    EXPECT_EQ(entry.path().filename(), "m.safetensors") << "temporary file left behind";
}

TEST_F(Safetensors, RefusesInvalidJson) {
  const std::string message = open_error(raw_file("{\"w\": {\"dtype\": \"F32\",", ""));
  expect_names_file(message);
  EXPECT_THAT(message, HasSubstr("not valid JSON"));
}

TEST_F(Safetensors, RefusesUnknownDtype) {
  const std::string message = open_error(
      raw_file(R"({"w.q": {"dtype": "F4", "shape": [2], "data_offsets": [0, 1]}})", "x"));
  expect_names_file(message);
  EXPECT_THAT(message, HasSubstr("tensor 'w.q'"));
  EXPECT_THAT(message, HasSubstr("unsupported dtype 'F4'"));
}

TEST_F(Safetensors, RefusesShapeThatDoesNotMatchByteRange) {
  const std::string message = open_error(
      raw_file(R"({"w.k": {"dtype": "BF16", "shape": [3, 2], "data_offsets": [0, 10]}})", std::string(12, 'x')));
  expect_names_file(message);
  EXPECT_THAT(message, HasSubstr("tensor 'w.k'"));
  EXPECT_THAT(message, HasSubstr("needs 12 bytes but data_offsets [0, 10] span 10"));
}

TEST_F(Safetensors, RefusesRangeOutsideTheFile) {
  const std::string message = open_error(
      raw_file(R"({"w.v": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}})", std::string(16, 'x')));
  expect_names_file(message);
  EXPECT_THAT(message, HasSubstr("tensor 'w.v'"));
  EXPECT_THAT(message, HasSubstr("past the end of the data"));
}

TEST_F(Safetensors, RefusesOverlappingTensors) {
  const std::string message = open_error(raw_file(
      R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
          "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
      std::string(12, 'x')));
  expect_names_file(message);
  EXPECT_THAT(message, HasSubstr("tensor 'b'"));
  EXPECT_THAT(message, HasSubstr("overlap tensor 'a'"));
}

TEST_F(Safetensors, RefusesDuplicateNames) {
  const std::string message = open_error(raw_file(
      R"({"dup": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]},
          "dup": {"dtype": "U8", "shape": [2], "data_offsets": [2, 4]}})",
      "abcd"));
  expect_names_file(message);
  EXPECT_THAT(message, HasSubstr("tensor 'dup'"));
  EXPECT_THAT(message, HasSubstr("listed twice"));
}

TEST_F(Safetensors, RefusesOversizedHeaderLength) {
  const std::string message = open_error(raw_file("{}", "", kSafetensorsMaxHeaderBytes + 1));
  expect_names_file(message);
  EXPECT_THAT(message, HasSubstr("exceeds"));
}

TEST_F(Safetensors, RefusesHeaderLengthBeyondTheFile) {
  const std::string message = open_error(raw_file("{}", "", 4096));
  expect_names_file(message);
  EXPECT_THAT(message, HasSubstr("runs past the end"));
}

TEST_F(Safetensors, RefusesFilesTooShortForTheLength) {
  expect_names_file(open_error("abc"));
  EXPECT_THAT(open_error(""), HasSubstr("too short"));
}

TEST_F(Safetensors, RefusesMalformedEntries) {
  struct Case {
    const char* header;
    const char* problem;
  };
  const Case cases[] = {
      {R"({"t": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}})", "non-negative integer"},
      {R"({"t": {"dtype": "F32", "shape": [1.5], "data_offsets": [0, 0]}})", "non-negative integer"},
      {R"({"t": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}})", "end before begin"},
      {R"({"t": {"dtype": "F32", "shape": [1]}})", "data_offsets"},
      {R"({"t": {"shape": [1], "data_offsets": [0, 4]}})", "dtype"},
      {R"({"t": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "extra": 1}})", "unexpected field 'extra'"},
      {R"({"t": [1, 2]})", "not an object"},
      {R"({"t": {"dtype": "F32", "shape": [4294967296, 4294967296, 4294967296], "data_offsets": [0, 4]}})",
       "overflows"},
  };
  for (const Case& c : cases) {
    const std::string message = open_error(raw_file(c.header, "abcd"));
    expect_names_file(message);
    EXPECT_THAT(message, HasSubstr("tensor 't'")) << c.header;
    EXPECT_THAT(message, HasSubstr(c.problem)) << c.header;
  }
  const std::string message = open_error(raw_file(R"({"__metadata__": {"n": 3}})", ""));
  expect_names_file(message);
  EXPECT_THAT(message, HasSubstr("__metadata__ value of 'n' is not a string"));
}

TEST_F(Safetensors, RefusesTruncatedFile) {
  const OwnedTensor a = random_tensor("first", DType::F32, {16});
  const OwnedTensor b = random_tensor("second", DType::BF16, {8, 8});
  write_safetensors(path("full.safetensors"), std::vector{a.view(), b.view()});
  const std::string full = read_bytes(path("full.safetensors"));
  const std::string message = open_error(full.substr(0, full.size() - 1));
  expect_names_file(message);
  EXPECT_THAT(message, HasSubstr("tensor 'second'"));
  EXPECT_THAT(message, HasSubstr("truncated"));
}

TEST_F(Safetensors, ShardedCheckpointRoundTrips) {
  std::vector<OwnedTensor> tensors;
  for (int i = 0; i < 7; ++i)
    tensors.push_back(random_tensor("model.layers." + std::to_string(i) + ".w", DType::BF16, {16, 16}));
  const std::map<std::string, std::string> metadata = {{"format", "pt"}};
  const auto written = write_safetensors_checkpoint(dir_, views(tensors), metadata, 1200);
  ASSERT_EQ(written.size(), 5u) << "two 512-byte tensors per 1200-byte shard, plus the index";
  EXPECT_EQ(written.back().filename(), "model.safetensors.index.json");
  EXPECT_FALSE(std::filesystem::exists(path("model.safetensors")));

  const SafetensorsCheckpoint checkpoint(dir_);
  EXPECT_EQ(checkpoint.shards().size(), 4u);
  EXPECT_EQ(checkpoint.metadata(), metadata);
  ASSERT_EQ(checkpoint.tensors().size(), tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    expect_same(tensors[i], *checkpoint.tensors()[i]);
    expect_same(tensors[i], checkpoint.at(tensors[i].name));
  }
  const auto index = nlohmann::json::parse(read_bytes(path("model.safetensors.index.json")));
  EXPECT_EQ(index["metadata"]["total_size"].get<uint64_t>(), 7u * 512u);

  // Fewer shards: the earlier write's extra shards are removed.
  write_safetensors_checkpoint(dir_, views(tensors), metadata, 2100);
  EXPECT_FALSE(std::filesystem::exists(path("model-00004-of-00004.safetensors")));
  EXPECT_TRUE(std::filesystem::exists(path("model-00002-of-00002.safetensors")));
  EXPECT_EQ(SafetensorsCheckpoint(dir_).tensors().size(), tensors.size());

  // Everything fits one file: a single model.safetensors replaces the shards and their index.
  write_safetensors_checkpoint(dir_, views(tensors), metadata);
  EXPECT_FALSE(std::filesystem::exists(path("model.safetensors.index.json")));
  EXPECT_FALSE(std::filesystem::exists(path("model-00001-of-00002.safetensors")));
  EXPECT_EQ(SafetensorsCheckpoint(dir_).tensors().size(), tensors.size());
}

class ShardedCorruption : public Safetensors {
 protected:
  void SetUp() override {
    Safetensors::SetUp();
    for (const char* name : {"t0", "t1", "t2", "t3"}) tensors_.push_back(random_tensor(name, DType::F32, {8}));
    write_safetensors_checkpoint(dir_, views(tensors_), {}, 64);  // two shards of two
    index_ = nlohmann::json::parse(read_bytes(path("model.safetensors.index.json")));
  }
  void rewrite_index() { write_bytes(path("model.safetensors.index.json"), index_.dump()); }
  std::string checkpoint_error() {
    return error_of([&] { SafetensorsCheckpoint checkpoint(dir_); });
  }

  std::vector<OwnedTensor> tensors_;
  nlohmann::json index_;
};

TEST_F(ShardedCorruption, MissingShard) {
  std::filesystem::remove(path("model-00002-of-00002.safetensors"));
  const std::string message = checkpoint_error();
  EXPECT_THAT(message, HasSubstr("model.safetensors.index.json"));
  EXPECT_THAT(message, HasSubstr("shard 'model-00002-of-00002.safetensors'"));
  EXPECT_THAT(message, HasSubstr("does not exist"));
}

TEST_F(ShardedCorruption, TensorListedInIndexButAbsentFromShard) {
  index_["weight_map"]["ghost"] = "model-00001-of-00002.safetensors";
  rewrite_index();
  const std::string message = checkpoint_error();
  EXPECT_THAT(message, HasSubstr("tensor 'ghost'"));
  EXPECT_THAT(message, HasSubstr("absent from shard"));
  EXPECT_THAT(message, HasSubstr("model-00001-of-00002.safetensors"));
}

TEST_F(ShardedCorruption, TensorInShardMissingFromIndex) {
  index_["weight_map"].erase("t3");
  rewrite_index();
  const std::string message = checkpoint_error();
  EXPECT_THAT(message, HasSubstr("tensor 't3'"));
  EXPECT_THAT(message, HasSubstr("not listed in the index"));
}

TEST_F(ShardedCorruption, ShardPathEscapingTheDirectory) {
  index_["weight_map"]["t0"] = "../elsewhere.safetensors";
  rewrite_index();
  EXPECT_THAT(checkpoint_error(), HasSubstr("not a plain file name"));
}

TEST_F(ShardedCorruption, IndexWithoutWeightMap) {
  write_bytes(path("model.safetensors.index.json"), R"({"metadata": {}})");
  EXPECT_THAT(checkpoint_error(), HasSubstr("no 'weight_map'"));
}

TEST_F(Safetensors, CheckpointPathErrors) {
  EXPECT_THAT(error_of([&] { SafetensorsCheckpoint c(path("nothing")); }), HasSubstr("no such file"));
  EXPECT_THAT(error_of([&] { SafetensorsCheckpoint c(dir_); }), HasSubstr("neither model.safetensors"));
}

}  // namespace
}  // namespace fireq
