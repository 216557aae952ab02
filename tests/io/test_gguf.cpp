#include <cmath>
#include <cstring>

#include "fireq/gguf.h"
#include "fireq/numerics.h"
#include "gguf_builder.h"
#include "test_util.h"

namespace fireq {
namespace {

using fireq::testing::error_of;
using fireq::testing::GgufBuilder;
using fireq::testing::gguf_array;
using fireq::testing::gguf_bool;
using fireq::testing::gguf_float;
using fireq::testing::gguf_int;
using fireq::testing::gguf_string;
using fireq::testing::gguf_string_array;
using fireq::testing::random_bytes;
using fireq::testing::rng;
using fireq::testing::write_bytes;
using ::testing::HasSubstr;

// Element i of a block-quantized tensor, straight from the format description.
float reference_element(GgmlType type, const std::string& bytes, int64_t i) {
  const int64_t block_bytes = ggml_block_bytes(type), block_elements = ggml_block_elements(type);
  const auto* block = reinterpret_cast<const uint8_t*>(bytes.data()) + (i / block_elements) * block_bytes;
  const int j = static_cast<int>(i % block_elements);
  auto f16_at = [&](int at) { return f16_to_float(static_cast<uint16_t>(block[at] | (block[at + 1] << 8))); };
  auto nibble = [&](const uint8_t* qs) { return j < 16 ? (qs[j] & 15) : (qs[j - 16] >> 4); };
  auto fifth_bit = [&](const uint8_t* qh) { return (qh[j / 8] >> (j % 8)) & 1; };
  switch (type) {
    case GgmlType::Q8_0: return f16_at(0) * static_cast<float>(static_cast<int8_t>(block[2 + j]));
    case GgmlType::Q4_0: return f16_at(0) * static_cast<float>(nibble(block + 2) - 8);
    case GgmlType::Q4_1: return f16_at(0) * static_cast<float>(nibble(block + 4)) + f16_at(2);
    case GgmlType::Q5_0:
      return f16_at(0) * static_cast<float>((nibble(block + 6) + 16 * fifth_bit(block + 2)) - 16);
    case GgmlType::Q5_1:
      return f16_at(0) * static_cast<float>(nibble(block + 8) + 16 * fifth_bit(block + 4)) + f16_at(2);
    case GgmlType::Q8_K: {
      float d;
      std::memcpy(&d, block, 4);
      return d * static_cast<float>(static_cast<int8_t>(block[4 + j]));
    }
    default: ADD_FAILURE() << "no reference for " << ggml_type_name(type); return 0;
  }
}

class Gguf : public fireq::testing::TempDirTest {
 protected:
  GgufFile open(const GgufBuilder& builder) {
    write_bytes(path("t.gguf"), builder.build());
    return GgufFile(path("t.gguf"));
  }
  std::string open_error(const std::string& bytes) {
    write_bytes(path("bad.gguf"), bytes);
    const std::string message = error_of([&] { GgufFile file(path("bad.gguf")); });
    EXPECT_THAT(message, HasSubstr(path("bad.gguf").string()));
    return message;
  }
  static GgufBuilder one_tensor_file() {
    GgufBuilder b;
    b.add("general.architecture", gguf_string("llama"));
    b.add_tensor("blk.0.w", GgmlType::F32, {8, 2}, std::string(64, '\1'));
    return b;
  }
};

TEST_F(Gguf, ReadsEveryMetadataTypeInBothVersions) {
  for (const uint32_t version : {2u, 3u}) {
    GgufBuilder b;
    b.version = version;
    b.add("u8", gguf_int(GgufType::UINT8, 250));
    b.add("i8", gguf_int(GgufType::INT8, -120));
    b.add("u16", gguf_int(GgufType::UINT16, 65000));
    b.add("i16", gguf_int(GgufType::INT16, -32000));
    b.add("u32", gguf_int(GgufType::UINT32, 4000000000));
    b.add("i32", gguf_int(GgufType::INT32, -2000000000));
    b.add("u64", gguf_int(GgufType::UINT64, int64_t{1} << 60));
    b.add("i64", gguf_int(GgufType::INT64, -(int64_t{1} << 60)));
    b.add("f32", gguf_float(GgufType::FLOAT32, 0.15625));
    b.add("f64", gguf_float(GgufType::FLOAT64, 1e-300));
    b.add("yes", gguf_bool(true));
    b.add("no", gguf_bool(false));
    b.add("text", gguf_string("héllo\nworld"));
    b.add("tokenizer.ggml.tokens", gguf_string_array({"<s>", "", "Ġthe", "\xe2\x96\x81"}));
    b.add("tokenizer.ggml.token_type",
          gguf_array(GgufType::INT32, {gguf_int(GgufType::INT32, 3), gguf_int(GgufType::INT32, -1)}));
    b.add("scores", gguf_array(GgufType::FLOAT32, {gguf_float(GgufType::FLOAT32, -0.5)}));
    b.add("empty", gguf_array(GgufType::STRING, {}));
    b.add("nested", gguf_array(GgufType::ARRAY,
                               {gguf_array(GgufType::UINT8, {gguf_int(GgufType::UINT8, 7)}),
                                gguf_array(GgufType::STRING, {gguf_string("x"), gguf_string("y")})}));
    const GgufFile f = open(b);
    EXPECT_EQ(f.version(), version);
    ASSERT_EQ(f.metadata().size(), b.metadata.size());
    EXPECT_EQ(f.metadata()[0].first, "u8");  // file order kept
    EXPECT_EQ(f.get_int("u8"), 250);
    EXPECT_EQ(f.get_int("i8"), -120);
    EXPECT_EQ(f.get_int("u16"), 65000);
    EXPECT_EQ(f.get_int("i16"), -32000);
    EXPECT_EQ(f.get_int("u32"), 4000000000);
    EXPECT_EQ(f.get_int("i32"), -2000000000);
    EXPECT_EQ(f.get_int("u64"), int64_t{1} << 60);
    EXPECT_EQ(f.get_int("i64"), -(int64_t{1} << 60));
    EXPECT_EQ(f.get_float("f32"), 0.15625);
    EXPECT_EQ(f.get_float("f64"), 1e-300);
    EXPECT_EQ(f.get_float("u8"), 250.0);  // integers widen to float
    EXPECT_TRUE(f.get_bool("yes"));
    EXPECT_FALSE(f.get_bool("no"));
    EXPECT_EQ(f.get_string("text"), "héllo\nworld");
    EXPECT_EQ(f.get_string_array("tokenizer.ggml.tokens"),
              (std::vector<std::string>{"<s>", "", "Ġthe", "\xe2\x96\x81"}));
    EXPECT_EQ(f.get_int_array("tokenizer.ggml.token_type"), (std::vector<int64_t>{3, -1}));
    EXPECT_EQ(f.get_float_array("scores"), std::vector<double>{-0.5});
    EXPECT_TRUE(f.get_string_array("empty").empty());
    EXPECT_EQ(f.find("empty")->element_type, GgufType::STRING);
    const auto& nested = std::get<GgufValue::Array>(f.find("nested")->value);
    ASSERT_EQ(nested.size(), 2u);
    EXPECT_EQ(std::get<int64_t>(std::get<GgufValue::Array>(nested[0].value)[0].value), 7);
    EXPECT_EQ(std::get<std::string>(std::get<GgufValue::Array>(nested[1].value)[1].value), "y");
    EXPECT_EQ(gguf_value_to_string(*f.find("tokenizer.ggml.token_type")), "INT32[2] [3, -1]");
    // Fallbacks apply to absent keys only.
    EXPECT_EQ(f.get_int("absent", 5), 5);
    EXPECT_EQ(f.get_string("absent", "d"), "d");
    EXPECT_THAT(error_of([&] { f.get_int("text", 5); }), HasSubstr("key 'text' is a STRING, expected an integer"));
    EXPECT_THAT(error_of([&] { f.get_string("absent"); }), HasSubstr("metadata key 'absent' is missing"));
    EXPECT_THAT(error_of([&] { f.get_string_array("tokenizer.ggml.token_type"); }),
                HasSubstr("expected an array of STRING"));
    EXPECT_THAT(error_of([&] { f.get_bool("u8"); }), HasSubstr(path("t.gguf").string()));
  }
}

TEST_F(Gguf, ReadsTensorTableWithCustomAlignment) {
  GgufBuilder b;
  b.alignment = 64;
  b.add("general.alignment", gguf_int(GgufType::UINT32, 64));
  const std::string q8 = fireq::testing::random_ggml_blocks(GgmlType::Q8_0, 6);
  const std::string f16 = std::string(2 * 5 * 3, '\7');
  b.add_tensor("token_embd.weight", GgmlType::Q8_0, {64, 3}, q8);
  b.add_tensor("norm", GgmlType::F16, {5, 3}, f16);
  const GgufFile f = open(b);
  EXPECT_EQ(f.alignment(), 64u);
  ASSERT_EQ(f.tensors().size(), 2u);
  const GgufTensor& embd = f.tensor("token_embd.weight");
  EXPECT_EQ(embd.type, GgmlType::Q8_0);
  EXPECT_EQ(embd.dims, (std::vector<int64_t>{64, 3}));
  EXPECT_EQ(embd.shape(), (std::vector<int64_t>{3, 64}));
  EXPECT_EQ(embd.numel(), 192);
  ASSERT_EQ(embd.data.size(), q8.size());
  EXPECT_EQ(std::memcmp(embd.data.data(), q8.data(), q8.size()), 0);
  const GgufTensor& norm = f.tensor("norm");
  EXPECT_EQ(norm.offset % 64, 0u);
  EXPECT_EQ(std::memcmp(norm.data.data(), f16.data(), f16.size()), 0);
  EXPECT_EQ(f.find_tensor("absent"), nullptr);
  EXPECT_THAT(error_of([&] { f.tensor("absent"); }), HasSubstr("no tensor named 'absent'"));
}

TEST_F(Gguf, DequantizesBlockTypesLikeTheFormatDescription) {
  for (const GgmlType type :
       {GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_K}) {
    const int64_t rows = 3, cols = 2 * ggml_block_elements(type);
    const std::string bytes = fireq::testing::random_ggml_blocks(type, rows * cols / ggml_block_elements(type));
    GgufBuilder b;
    b.add_tensor("w", type, {cols, rows}, bytes);
    const GgufFile f = open(b);
    const std::vector<float> values = dequantize(f.tensor("w"));
    ASSERT_EQ(values.size(), static_cast<size_t>(rows * cols));
    float absmax = 0;
    for (int64_t i = 0; i < rows * cols; ++i) {
      ASSERT_FLOAT_EQ(values[i], reference_element(type, bytes, i)) << ggml_type_name(type) << " element " << i;
      absmax = std::max(absmax, std::abs(values[i]));
    }
    EXPECT_GT(absmax, 0.0f) << "random blocks must not decode to all zeros";
  }
}

// Golden values from the gguf Python package (tests/io/make_dequant_golden.py), an independent
// implementation of every block format, K-quants included.
TEST(GgufDequantGolden, MatchesTheGgufPythonPackage) {
  const GgufFile f(std::filesystem::path(FIREQ_SOURCE_DIR) / "tests/io/data/dequant_golden.gguf");
  int checked = 0;
  for (const GgufTensor& t : f.tensors()) {
    if (t.type == GgmlType::F32) continue;
    const std::vector<float> values = dequantize(t);
    const std::vector<float> expected = dequantize(f.tensor(t.name + ".expected"));
    ASSERT_EQ(values.size(), expected.size()) << t.name;
    for (size_t i = 0; i < values.size(); ++i)
      ASSERT_EQ(float_bits(values[i]), float_bits(expected[i]))
          << t.name << " element " << i << ": " << values[i] << " vs " << expected[i];
    ++checked;
  }
  EXPECT_EQ(checked, 10);  // Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q2_K Q3_K Q4_K Q5_K Q6_K
}

TEST_F(Gguf, DequantizesPlainFloatTypes) {
  const auto f32 = random_bytes(4 * 40), f16 = random_bytes(2 * 40), bf16 = random_bytes(2 * 40);
  GgufBuilder b;
  b.add_tensor("f32", GgmlType::F32, {40}, std::string(reinterpret_cast<const char*>(f32.data()), f32.size()));
  b.add_tensor("f16", GgmlType::F16, {40}, std::string(reinterpret_cast<const char*>(f16.data()), f16.size()));
  b.add_tensor("bf16", GgmlType::BF16, {40}, std::string(reinterpret_cast<const char*>(bf16.data()), bf16.size()));
  const GgufFile f = open(b);
  const auto v32 = dequantize(f.tensor("f32")), v16 = dequantize(f.tensor("f16")), vb = dequantize(f.tensor("bf16"));
  for (int i = 0; i < 40; ++i) {
    uint32_t u32;
    uint16_t u16, ub;
    std::memcpy(&u32, f32.data() + 4 * i, 4);
    std::memcpy(&u16, f16.data() + 2 * i, 2);
    std::memcpy(&ub, bf16.data() + 2 * i, 2);
    EXPECT_EQ(float_bits(v32[i]), u32);
    EXPECT_EQ(float_bits(v16[i]), float_bits(f16_to_float(u16)));
    EXPECT_EQ(float_bits(vb[i]), float_bits(bf16_to_float(ub)));
  }
}

TEST_F(Gguf, RefusesToDequantizeUnimplementedTypes) {
  GgufBuilder b;
  b.add_tensor("blk.0.ffn_down.weight", GgmlType::IQ2_XS, {256, 1}, std::string(74, '\0'));
  const GgufFile f = open(b);
  const std::string message = error_of([&] { dequantize(f.tensor("blk.0.ffn_down.weight")); });
  EXPECT_THAT(message, HasSubstr("blk.0.ffn_down.weight"));
  EXPECT_THAT(message, HasSubstr("IQ2_XS"));
}

TEST_F(Gguf, RefusesBadMagicAndVersion) {
  EXPECT_THAT(open_error("GGML\3\0\0\0"), HasSubstr("bad magic"));
  EXPECT_THAT(open_error(""), HasSubstr("bad magic"));
  GgufBuilder b = one_tensor_file();
  b.version = 1;
  EXPECT_THAT(open_error(b.build()), HasSubstr("unsupported GGUF version 1"));
  b.version = 4;
  EXPECT_THAT(open_error(b.build()), HasSubstr("unsupported GGUF version 4"));
}

TEST_F(Gguf, EveryTruncationIsACleanError) {
  GgufBuilder b = one_tensor_file();
  b.add("tokenizer.ggml.tokens", gguf_string_array({"a", "bc"}));
  const std::string full = b.build();
  for (size_t length = 0; length < full.size(); ++length) {
    write_bytes(path("cut.gguf"), full.substr(0, length));
    const std::string message = error_of([&] { GgufFile f(path("cut.gguf")); });
    EXPECT_FALSE(message.empty()) << "prefix of " << length << " bytes was accepted";
  }
  write_bytes(path("cut.gguf"), full.substr(0, full.size() - 1));
  const std::string message = error_of([&] { GgufFile f(path("cut.gguf")); });
  EXPECT_THAT(message, HasSubstr("tensor 'blk.0.w'"));
  EXPECT_THAT(message, HasSubstr("file truncated?"));
}

TEST_F(Gguf, RefusesTensorOffsetOutOfRange) {
  GgufBuilder b = one_tensor_file();
  b.add_tensor("far", GgmlType::F32, {8}, std::string(32, '\0')).offset_override = 1 << 20;
  const std::string message = open_error(b.build());
  EXPECT_THAT(message, HasSubstr("tensor 'far'"));
  EXPECT_THAT(message, HasSubstr("runs past the end of the data section"));
}

TEST_F(Gguf, RefusesMisalignedAndOverlappingTensors) {
  GgufBuilder b = one_tensor_file();
  b.add_tensor("odd", GgmlType::F32, {8}, std::string(32, '\0')).offset_override = 4;
  EXPECT_THAT(open_error(b.build()), HasSubstr("not a multiple of the alignment 32"));
  b.tensors.back().offset_override = 32;  // inside blk.0.w's 64 bytes
  const std::string message = open_error(b.build());
  EXPECT_THAT(message, HasSubstr("tensor 'odd'"));
  EXPECT_THAT(message, HasSubstr("overlaps tensor 'blk.0.w'"));
}

TEST_F(Gguf, RefusesUnknownGgmlType) {
  GgufBuilder b = one_tensor_file();
  b.tensors[0].type = 99;
  const std::string message = open_error(b.build());
  EXPECT_THAT(message, HasSubstr("tensor 'blk.0.w'"));
  EXPECT_THAT(message, HasSubstr("unknown or unsupported ggml type id 99"));
}

TEST_F(Gguf, RefusesMalformedTables) {
  GgufBuilder b = one_tensor_file();
  b.add("general.architecture", gguf_string("again"));
  EXPECT_THAT(open_error(b.build()), HasSubstr("key 'general.architecture' appears twice"));

  b = one_tensor_file();
  b.add_tensor("blk.0.w", GgmlType::F32, {8}, std::string(32, '\0'));
  EXPECT_THAT(open_error(b.build()), HasSubstr("name appears twice"));

  b = one_tensor_file();
  b.tensors[0].type = static_cast<uint32_t>(GgmlType::Q4_0);
  b.tensors[0].dims = {48, 1};
  EXPECT_THAT(open_error(b.build()), HasSubstr("row length 48 is not a multiple of the Q4_0 block size 32"));

  b = one_tensor_file();
  b.tensors[0].dims = {};
  EXPECT_THAT(open_error(b.build()), HasSubstr("0 dimensions"));

  b = one_tensor_file();
  b.add("general.alignment", gguf_int(GgufType::UINT32, 48));
  EXPECT_THAT(open_error(b.build()), HasSubstr("not a positive power of two"));

  b = one_tensor_file();
  b.add("bad_bool", gguf_bool(true));
  std::string bytes = b.build();
  const size_t at = bytes.find("bad_bool") + 8 + 4;  // key, then the value type
  bytes[at] = 7;
  EXPECT_THAT(open_error(bytes), HasSubstr("bool value 7"));

  b = one_tensor_file();
  b.add("weird", gguf_int(GgufType::UINT8, 1));
  bytes = b.build();
  bytes[bytes.find("weird") + 5] = 42;  // the value type
  EXPECT_THAT(open_error(bytes), HasSubstr("key 'weird': unknown value type 42"));
}

TEST_F(Gguf, RefusesImpossibleCounts) {
  GgufBuilder b = one_tensor_file();
  b.add("tokens", gguf_string_array({"a"}));
  std::string bytes = b.build();
  const uint64_t huge = uint64_t{1} << 50;
  std::memcpy(bytes.data() + bytes.find("tokens") + 6 + 4 + 4, &huge, 8);  // the array length
  EXPECT_THAT(open_error(bytes), HasSubstr("cannot fit in the remaining"));
  bytes = b.build();
  std::memcpy(bytes.data() + 16, &huge, 8);  // the metadata count
  EXPECT_THAT(open_error(bytes), HasSubstr("metadata count"));
}

TEST_F(Gguf, RandomCorruptionNeverCrashes) {
  GgufBuilder b = one_tensor_file();
  b.add("tokenizer.ggml.tokens", gguf_string_array({"alpha", "beta", "gamma"}));
  b.add("nested", gguf_array(GgufType::ARRAY, {gguf_array(GgufType::INT32, {gguf_int(GgufType::INT32, 1)})}));
  const std::string full = b.build();
  const size_t header_end = full.size() - 64;
  std::uniform_int_distribution<size_t> position(0, header_end - 1);
  int rejected = 0;
  for (int trial = 0; trial < 300; ++trial) {
    std::string bytes = full;
    for (int flips = 0; flips < 3; ++flips) bytes[position(rng())] = static_cast<char>(rng()() & 0xFF);
    write_bytes(path("fuzz.gguf"), bytes);
    try {
      GgufFile f(path("fuzz.gguf"));
    } catch (const fireq::Error&) {
      ++rejected;
    }
  }
  EXPECT_GT(rejected, 0);
}

TEST(GgufRealModel, SmolLM2TokenizerMetadataAndTensorTypes) {
  const std::filesystem::path model =
      std::filesystem::path(FIREQ_SOURCE_DIR) / "data/models/SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!std::filesystem::exists(model)) GTEST_SKIP() << model << " not present (run scripts/setup.sh)";
  const GgufFile f(model);
  EXPECT_EQ(f.get_string("general.architecture"), "llama");
  EXPECT_EQ(f.get_string_array("tokenizer.ggml.tokens").size(), 49152u);
  EXPECT_EQ(f.get_string_array("tokenizer.ggml.merges").size(), 48900u);
  EXPECT_EQ(f.get_int_array("tokenizer.ggml.token_type").size(), 49152u);
  EXPECT_EQ(f.get_string("tokenizer.ggml.model"), "gpt2");
  EXPECT_GE(f.get_int("tokenizer.ggml.bos_token_id"), 0);
  EXPECT_GE(f.get_int("tokenizer.ggml.eos_token_id"), 0);
  EXPECT_EQ(f.tensors().size(), 2u + 30u * 9u);
  std::map<GgmlType, int> types;
  for (const GgufTensor& t : f.tensors()) ++types[t.type];
  EXPECT_EQ(types[GgmlType::Q4_1], 210);
  EXPECT_EQ(types[GgmlType::Q8_0], 1);
  EXPECT_EQ(types[GgmlType::F32], 61);
}

}  // namespace
}  // namespace fireq
