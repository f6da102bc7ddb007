// safetensors files: the writer's exact bytes, round trips of F32/BF16/F16,
// one clear error per kind of malformed file, and the float conversions
// (bf16 round to nearest even, f16 exhaustively) against independent oracles.
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "trainer/safetensors.h"
#include "test_util.h"

namespace fs = std::filesystem;
using Catch::Matchers::Contains;
using deco::SafetensorsFile;
using deco::StDtype;
using deco::StTensorInfo;
using deco::StTensorView;
using deco::test::TempDir;
using deco::test::error_of;

namespace {

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// A file with this header text and data; `length` overrides the header
// length field (to write lying files).
void write_raw(const std::string& path, const std::string& header, const std::string& data,
               uint64_t length = UINT64_MAX) {
  const uint64_t n = length == UINT64_MAX ? header.size() : length;
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i) bytes[static_cast<size_t>(i)] = static_cast<char>(n >> (8 * i));
  std::ofstream(path, std::ios::binary) << bytes << header << data;
}

std::string open_error(const std::string& path) {
  return error_of([&] { SafetensorsFile f(path); });
}

uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

float float_of(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

}  // namespace

TEST_CASE("safetensors: the writer's bytes are the format's, header padded to 8", "[safetensors]") {
  TempDir dir;
  const float values[6] = {0, 1, 2, 3, 4, 5};
  deco::write_safetensors(dir / "a.safetensors", {{"attn0", StDtype::F32, {1, 1, 2, 3}, values}});
  const std::string bytes = read_all(dir / "a.safetensors");
  // 65 bytes of JSON padded with 7 spaces to 72, then the 24 data bytes.
  const std::string header = R"({"attn0":{"dtype":"F32","shape":[1,1,2,3],"data_offsets":[0,24]}})";
  REQUIRE(bytes.size() == 8 + 72 + 24);
  CHECK(bytes.substr(0, 8) == std::string("\x48\0\0\0\0\0\0\0", 8));
  CHECK(bytes.substr(8, 72) == header + std::string(7, ' '));
  CHECK(std::memcmp(bytes.data() + 80, values, 24) == 0);
  CHECK(dir.entries() == 1);  // no temporary left behind
}

TEST_CASE("safetensors: F32, BF16 and F16 round trip with metadata", "[safetensors]") {
  TempDir dir;
  const std::string path = dir / "m.safetensors";
  std::vector<float> f32(3 * 5);
  for (size_t i = 0; i < f32.size(); ++i) f32[i] = 0.1f * static_cast<float>(i) - 0.7f;
  // 7 BF16 elements (14 bytes): an odd count that would misalign a later F32
  // tensor if the writer kept the given order.
  const std::vector<uint16_t> bf16 = {0x3f80, 0xbf82, 0x0001, 0x7f80, 0x7fc0, 0x8000, 0x4049};
  const std::vector<uint16_t> f16 = {0x3c00, 0xc000, 0x7bff, 0x0001, 0x3555, 0x8000};
  const double scalar = 2.5;
  deco::write_safetensors(path,
                          {{"b.half", StDtype::BF16, {7}, bf16.data()},
                           {"a.float", StDtype::F32, {3, 5}, f32.data()},
                           {"c.f16", StDtype::F16, {2, 3}, f16.data()},
                           {"d.empty", StDtype::F32, {0, 4}, nullptr},
                           {"e.scalar", StDtype::F64, {}, &scalar}},
                          {{"format", "pt"}, {"note", "h\u00e9llo"}});

  const SafetensorsFile file(path);
  CHECK(file.metadata() ==
        std::map<std::string, std::string>{{"format", "pt"}, {"note", "h\u00e9llo"}});
  REQUIRE(file.tensors().size() == 5);
  // Larger elements first, the given order among equal sizes.
  std::vector<std::string> order;
  for (const StTensorInfo& t : file.tensors()) order.push_back(t.name);
  CHECK(order == std::vector<std::string>{"e.scalar", "a.float", "d.empty", "b.half", "c.f16"});
  const uint64_t data_start = read_all(path).size() - (8 + 60 + 14 + 12);
  CHECK(data_start % 8 == 0);
  for (const StTensorInfo& t : file.tensors()) CHECK(t.begin % deco::st_dtype_size(t.dtype) == 0);

  const StTensorInfo* a = file.find("a.float");
  REQUIRE(a != nullptr);
  CHECK(a->dtype == StDtype::F32);
  CHECK(a->shape == std::vector<int64_t>{3, 5});
  std::vector<float> got(15);
  file.read_float32(*a, got.data());
  CHECK(std::memcmp(got.data(), f32.data(), 15 * sizeof(float)) == 0);

  const StTensorInfo* b = file.find("b.half");
  REQUIRE(b != nullptr);
  CHECK(b->dtype == StDtype::BF16);
  const std::vector<uint8_t> raw = file.read_bytes(*b);
  CHECK(std::memcmp(raw.data(), bf16.data(), 14) == 0);
  std::vector<float> bvals(7);
  file.read_float32(*b, bvals.data());
  CHECK(bvals[0] == 1.0f);
  CHECK(bvals[1] == -1.015625f);
  CHECK(bvals[2] == std::ldexp(1.0f, -133));  // the smallest bf16 subnormal
  CHECK(std::isinf(bvals[3]));
  CHECK(std::isnan(bvals[4]));
  CHECK((bvals[5] == 0.0f && std::signbit(bvals[5])));
  CHECK(bvals[6] == 3.140625f);

  const StTensorInfo* c = file.find("c.f16");
  REQUIRE(c != nullptr);
  CHECK(c->shape == std::vector<int64_t>{2, 3});
  std::vector<float> cvals(6);
  file.read_float32(*c, cvals.data());
  CHECK(cvals ==
        std::vector<float>{1.0f, -2.0f, 65504.0f, std::ldexp(1.0f, -24), 0.333251953125f, -0.0f});
  CHECK(std::signbit(cvals[5]));

  const StTensorInfo* d = file.find("d.empty");
  REQUIRE(d != nullptr);
  CHECK(d->numel() == 0);
  CHECK(d->begin == d->end);
  const StTensorInfo* e = file.find("e.scalar");
  REQUIRE(e != nullptr);
  CHECK(e->shape.empty());
  float s = 0;
  file.read_float32(*e, &s);
  CHECK(s == 2.5f);
  CHECK(file.find("nope") == nullptr);
}

TEST_CASE("safetensors: writing replaces a file atomically and refuses bad names", "[safetensors]") {
  TempDir dir;
  const std::string path = dir / "w.safetensors";
  const float one = 1.0f, two = 2.0f;
  deco::write_safetensors(path, {{"x", StDtype::F32, {1}, &one}});
  deco::write_safetensors(path, {{"y", StDtype::F32, {1}, &two}});
  const SafetensorsFile file(path);
  REQUIRE(file.tensors().size() == 1);
  CHECK(file.tensors()[0].name == "y");
  CHECK(dir.entries() == 1);

  CHECK_THAT(error_of([&] {
               deco::write_safetensors(
                   path, {{"x", StDtype::F32, {1}, &one}, {"x", StDtype::F32, {1}, &two}});
             }),
             Contains("w.safetensors") && Contains("two tensors are named \"x\""));
  CHECK_THAT(error_of([&] {
               deco::write_safetensors(path, {{"__metadata__", StDtype::F32, {1}, &one}});
             }),
             Contains("reserved"));
  CHECK_THAT(error_of([&] { deco::write_safetensors(dir / "no/such/dir/f.safetensors", {}); }),
             Contains("does not exist"));
  // The refused writes left the earlier file as it was.
  CHECK(SafetensorsFile(path).tensors()[0].name == "y");
  CHECK(dir.entries() == 1);
}

TEST_CASE("safetensors: malformed files are each one clear error", "[safetensors]") {
  TempDir dir;
  const std::string path = dir / "bad.safetensors";
  const std::string data24(24, '\0');
  auto header = [](const std::string& tensors) { return "{" + tensors + "}"; };
  auto tensor = [](const std::string& name, const std::string& dtype, const std::string& shape,
                   uint64_t begin, uint64_t end) {
    return "\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":" + shape +
           ",\"data_offsets\":[" + std::to_string(begin) + "," + std::to_string(end) + "]}";
  };
  struct Case {
    const char* what;
    std::string header, data;
    uint64_t length;
    std::vector<std::string> expected;
  };
  const std::vector<Case> cases = {
      {"header length past EOF", header(tensor("a", "F32", "[6]", 0, 24)), data24, 1000,
       {"header length field says 1000 bytes", "truncated"}},
      {"header length over the limit", "{}", "", 200'000'000, {"limit of 100000000"}},
      {"bad JSON", "{\"a\":{\"dtype\":\"F32\",", "", UINT64_MAX, {"not valid JSON"}},
      {"not starting with {", "[1, 2]", "", UINT64_MAX, {"does not start with '{'"}},
      {"repeated key",
       header(tensor("a", "F32", "[6]", 0, 24) + "," + tensor("a", "F32", "[6]", 0, 24)), data24,
       UINT64_MAX, {"repeats the key \"a\""}},
      {"overlapping offsets",
       header(tensor("a", "F32", "[4]", 0, 16) + "," + tensor("b", "F32", "[4]", 8, 24)), data24,
       UINT64_MAX, {"\"a\" [0, 16]", "\"b\" [8, 24]", "overlap"}},
      {"gap between tensors",
       header(tensor("a", "F32", "[2]", 0, 8) + "," + tensor("b", "F32", "[2]", 16, 24)), data24,
       UINT64_MAX, {"bytes [8, 16]", "belong to no tensor", "\"b\""}},
      {"offsets out of range", header(tensor("a", "F32", "[8]", 0, 32)), data24, UINT64_MAX,
       {"\"a\"", "[0, 32]", "past the end of the data buffer (24 bytes)"}},
      {"trailing bytes", header(tensor("a", "F32", "[4]", 0, 16)), data24, UINT64_MAX,
       {"holds 24 bytes", "end at byte 16"}},
      {"unknown dtype", header(tensor("a", "F17", "[6]", 0, 24)), data24, UINT64_MAX,
       {"\"a\"", "dtype \"F17\"", "does not define", "BF16"}},
      {"size mismatch", header(tensor("a", "F32", "[2, 4]", 0, 24)), data24, UINT64_MAX,
       {"\"a\"", "[0, 24] (24 bytes)", "shape [2, 4] of F32 needs 32 bytes"}},
      {"end before begin", header(tensor("a", "F32", "[0]", 24, 0)), data24, UINT64_MAX,
       {"\"a\"", "end before they begin"}},
      {"negative dimension", header(tensor("a", "F32", "[-6]", 0, 24)), data24, UINT64_MAX,
       {"\"a\"", "\"shape\" is [-6]", "non-negative integers"}},
      {"missing field", header("\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,24]}"), data24,
       UINT64_MAX, {"\"a\" has no \"shape\""}},
      {"metadata not strings",
       header("\"__metadata__\":{\"n\":3}," + tensor("a", "F32", "[6]", 0, 24)), data24,
       UINT64_MAX, {"\"__metadata__\" entry \"n\" is 3"}},
  };
  for (const Case& c : cases) {
    INFO(c.what);
    write_raw(path, c.header, c.data, c.length);
    const std::string message = open_error(path);
    CHECK_THAT(message, Contains(path + " is not a valid safetensors file: "));
    for (const std::string& piece : c.expected) CHECK_THAT(message, Contains(piece));
  }

  std::ofstream(path, std::ios::binary) << "abc";
  CHECK_THAT(open_error(path), Contains("it has 3 bytes, fewer than the 8"));
  CHECK_THAT(open_error(dir / "missing.safetensors"), Contains("missing.safetensors") &&
                                                          Contains("No such file"));
  CHECK_THAT(open_error(dir.path.string()), Contains("is a directory"));

  // Integer tensors are valid files but not weights.
  write_raw(path, header(tensor("ids", "I32", "[6]", 0, 24)), data24);
  const SafetensorsFile file(path);
  std::vector<float> out(6);
  CHECK_THAT(error_of([&] { file.read_float32(file.tensors()[0], out.data()); }),
             Contains("\"ids\" holds I32 data") && Contains("floating point"));
}

TEST_CASE("safetensors: padding spaces and any tensor order in the header are accepted",
          "[safetensors]") {
  TempDir dir;
  const std::string path = dir / "ok.safetensors";
  std::string data(4 * 2 + 2 * 2, '\0');
  const float f[2] = {1.5f, -3.0f};
  const uint16_t h[2] = {0x4000, 0xc100};  // bf16 2.0, -8.0
  std::memcpy(&data[0], f, 8);
  std::memcpy(&data[8], h, 4);
  // The later tensor listed first, header padded with spaces.
  write_raw(path,
            R"({"z":{"dtype":"BF16","shape":[2],"data_offsets":[8,12]},)"
            R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}   )",
            data);
  const SafetensorsFile file(path);
  REQUIRE(file.tensors().size() == 2);
  CHECK(file.tensors()[0].name == "a");
  float z[2];
  file.read_float32(*file.find("z"), z);
  CHECK(z[0] == 2.0f);
  CHECK(z[1] == -8.0f);
  float a[2];
  file.read_float32(*file.find("a"), a);
  CHECK(a[0] == 1.5f);
  CHECK(a[1] == -3.0f);
}

TEST_CASE("safetensors: bf16 rounds to nearest, ties to even, and keeps NaN", "[safetensors]") {
  using deco::float_to_bf16_bits;
  CHECK(float_to_bf16_bits(1.0f) == 0x3f80);
  CHECK(float_to_bf16_bits(float_of(0x3f808000)) == 0x3f80);  // tie, even neighbour below
  CHECK(float_to_bf16_bits(float_of(0x3f818000)) == 0x3f82);  // tie, even neighbour above
  CHECK(float_to_bf16_bits(float_of(0x3f808001)) == 0x3f81);  // just above half
  CHECK(float_to_bf16_bits(float_of(0x3f807fff)) == 0x3f80);  // just below half
  CHECK(float_to_bf16_bits(float_of(0xbf818000)) == 0xbf82);  // sign is symmetric
  CHECK(float_to_bf16_bits(float_of(0x00008000)) == 0x0000);  // subnormal tie to even
  CHECK(float_to_bf16_bits(float_of(0x00018000)) == 0x0002);
  CHECK(float_to_bf16_bits(std::numeric_limits<float>::max()) == 0x7f80);  // rounds up to Inf
  CHECK(float_to_bf16_bits(std::numeric_limits<float>::infinity()) == 0x7f80);
  CHECK(float_to_bf16_bits(-std::numeric_limits<float>::infinity()) == 0xff80);
  CHECK(float_to_bf16_bits(-0.0f) == 0x8000);
  CHECK(float_to_bf16_bits(float_of(0x7fc00000)) == 0x7fc0);
  // Payloads only in the low half would truncate to Inf; they stay NaN, sign kept.
  CHECK(std::isnan(deco::bf16_bits_to_float(float_to_bf16_bits(float_of(0x7f800001)))));
  CHECK(float_to_bf16_bits(float_of(0xff800001)) == 0xffc0);
  CHECK(std::isnan(deco::bf16_bits_to_float(float_to_bf16_bits(float_of(0x7fffffff)))));

  // Against an oracle in double arithmetic: the nearer of the two bf16
  // neighbours, the even one on a tie, over random finite floats. Inf stands
  // for 2^128 there, the next power of two, as in IEEE's overflow rule.
  auto value = [](uint16_t b) {
    const double v = deco::bf16_bits_to_float(b);
    return std::isinf(v) ? std::copysign(std::ldexp(1.0, 128), v) : v;
  };
  std::mt19937 gen(7);
  int checked = 0;
  for (int i = 0; i < 200000; ++i) {
    const uint32_t u = static_cast<uint32_t>(gen());
    const float x = float_of(u);
    if (!std::isfinite(x)) continue;
    const uint16_t lo = static_cast<uint16_t>(u >> 16);  // truncation: toward zero
    const uint16_t hi = static_cast<uint16_t>(lo + 1);   // next magnitude up
    const double dlo = std::fabs(static_cast<double>(x) - value(lo));
    const double dhi = std::fabs(static_cast<double>(x) - value(hi));
    const uint16_t want = dlo < dhi ? lo : dhi < dlo ? hi : ((lo & 1) == 0 ? lo : hi);
    if (float_to_bf16_bits(x) != want)
      FAIL("float bits " << u << ": got " << float_to_bf16_bits(x) << ", want " << want);
    ++checked;
  }
  CHECK(checked > 190000);
  CHECK(deco::bf16_bits_to_float(0x4049) == 3.140625f);
  CHECK(bits_of(deco::bf16_bits_to_float(0xc2f7)) == 0xc2f70000u);
}

TEST_CASE("safetensors: f16 converts exactly, every bit pattern", "[safetensors]") {
  for (uint32_t b = 0; b < 0x10000; ++b) {
    const uint16_t bits = static_cast<uint16_t>(b);
    const float got = deco::f16_bits_to_float(bits);
    const int exponent = (b >> 10) & 0x1f;
    const int mantissa = b & 0x3ff;
    const bool negative = (b & 0x8000) != 0;
    if (exponent == 0x1f) {
      if (mantissa == 0) REQUIRE((std::isinf(got) && std::signbit(got) == negative));
      else REQUIRE(std::isnan(got));
      continue;
    }
    const double magnitude = exponent == 0 ? std::ldexp(mantissa, -24)
                                           : std::ldexp(1024 + mantissa, exponent - 25);
    REQUIRE(static_cast<double>(got) == (negative ? -magnitude : magnitude));
    REQUIRE(std::signbit(got) == negative);
  }
}

TEST_CASE("safetensors: F64 values are rounded to float32, beyond its range to Inf",
          "[safetensors]") {
  TempDir dir;
  const std::string path = dir / "d.safetensors";
  const double values[4] = {0.1, -1e300, 1e300, 3.0};
  deco::write_safetensors(path, {{"d", StDtype::F64, {4}, values}});
  const SafetensorsFile file(path);
  float out[4];
  file.read_float32(file.tensors()[0], out);
  CHECK(out[0] == 0.1f);
  CHECK((std::isinf(out[1]) && out[1] < 0));
  CHECK((std::isinf(out[2]) && out[2] > 0));
  CHECK(out[3] == 3.0f);
}
