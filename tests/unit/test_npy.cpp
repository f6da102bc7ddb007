// .npy reading and writing: round trips, files made by NumPy itself, NumPy
// reading ours, and the message of every malformed-file error.
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "data/npy.h"
#include "test_util.h"

namespace fs = std::filesystem;
using Catch::Matchers::Contains;
using deco::NpyArray;

using deco::test::TempDir;
using deco::test::error_of;
using deco::test::kPython;
using deco::test::run_command;
using deco::test::source_dir;

namespace {

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out << bytes;
}


// The independent-reader checks need NumPy; without it they are skipped
// with a warning rather than failed, since a bare build machine is valid.
bool have_numpy() {
  if (::access(kPython, X_OK) != 0) return false;
  int rc = 0;
  run_command(std::string(kPython) + " -c 'import numpy' 2>/dev/null", &rc);
  return rc == 0;
}

std::string check_io(const std::string& args, int* rc) {
  return run_command(std::string(kPython) + " " + source_dir() + "/tests/reference/check_io.py " + args, rc);
}

template <typename T>
std::vector<T> values_of(const NpyArray& a) {
  REQUIRE(a.bytes.size() == static_cast<size_t>(a.numel()) * sizeof(T));
  std::vector<T> out(static_cast<size_t>(a.numel()));
  if (!out.empty()) std::memcpy(out.data(), a.bytes.data(), a.bytes.size());
  return out;
}

// A valid little int32 file whose header text the malformed-file tests edit.
std::string valid_file(const TempDir& dir) {
  const std::string path = dir / "valid.npy";
  const int32_t data[6] = {1, 2, 3, 4, 5, 6};
  deco::write_npy(path, "<i4", {2, 3}, data);
  return read_file(path);
}

}  // namespace

TEST_CASE("npy: write then read round trip", "[io]") {
  TempDir dir;

  SECTION("int32 1-D") {
    const std::vector<int32_t> v = {-3, 0, 7, INT32_MAX, INT32_MIN};
    deco::write_npy(dir / "a.npy", "<i4", {5}, v.data());
    const NpyArray a = deco::read_npy(dir / "a.npy");
    CHECK(a.descr == "<i4");
    CHECK(a.shape == std::vector<int64_t>{5});
    CHECK(a.numel() == 5);
    CHECK(a.itemsize() == 4);
    CHECK(values_of<int32_t>(a) == v);
    // Data starts on a 64-byte boundary, as NumPy writes it.
    CHECK((fs::file_size(dir / "a.npy") - 20) % 64 == 0);
  }
  SECTION("int64 2-D") {
    const std::vector<int64_t> v = {INT64_MIN, -1, 0, 1, int64_t{1} << 40, INT64_MAX};
    deco::write_npy(dir / "b.npy", "<i8", {2, 3}, v.data());
    const NpyArray a = deco::read_npy(dir / "b.npy");
    CHECK(a.descr == "<i8");
    CHECK(a.shape == std::vector<int64_t>{2, 3});
    CHECK(values_of<int64_t>(a) == v);
  }
  SECTION("float32 3-D") {
    std::vector<float> v(24);
    for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(i) * 0.37f - 4.0f;
    deco::write_npy(dir / "c.npy", "<f4", {2, 3, 4}, v.data());
    const NpyArray a = deco::read_npy(dir / "c.npy");
    CHECK(a.descr == "<f4");
    CHECK(a.shape == std::vector<int64_t>{2, 3, 4});
    CHECK(a.numel() == 24);
    CHECK(values_of<float>(a) == v);
  }
  SECTION("empty and 0-d arrays") {
    deco::write_npy(dir / "e.npy", "<f4", {0, 3}, nullptr);
    const NpyArray e = deco::read_npy(dir / "e.npy");
    CHECK(e.shape == std::vector<int64_t>{0, 3});
    CHECK(e.numel() == 0);
    CHECK(e.bytes.empty());
    const double x = 2.5;
    deco::write_npy(dir / "s.npy", "<f8", {}, &x);
    const NpyArray s = deco::read_npy(dir / "s.npy");
    CHECK(s.shape.empty());
    CHECK(s.numel() == 1);
    CHECK(values_of<double>(s) == std::vector<double>{2.5});
  }
  SECTION("overwrites an existing file and leaves no temporary") {
    const int32_t one = 1, two = 2;
    deco::write_npy(dir / "o.npy", "<i4", {1}, &one);
    deco::write_npy(dir / "o.npy", "<i4", {1}, &two);
    CHECK(values_of<int32_t>(deco::read_npy(dir / "o.npy")) == std::vector<int32_t>{2});
    CHECK(std::distance(fs::directory_iterator(dir.path), fs::directory_iterator()) == 1);
  }
}

TEST_CASE("npy: files written by NumPy are read", "[io]") {
  if (!have_numpy()) {
    WARN("skipped: " << kPython << " with numpy not found");
    return;
  }
  TempDir dir;
  int rc = 0;
  check_io("write-npy " + dir.path.string(), &rc);
  REQUIRE(rc == 0);

  const NpyArray i4 = deco::read_npy(dir / "i4_2d.npy");
  CHECK(i4.descr == "<i4");
  CHECK(i4.shape == std::vector<int64_t>{3, 4});
  std::vector<int32_t> want_i4;
  for (int32_t i = 0; i < 12; ++i) want_i4.push_back(i * 3 - 7);
  CHECK(values_of<int32_t>(i4) == want_i4);

  const NpyArray i8 = deco::read_npy(dir / "i8_1d.npy");
  CHECK(i8.shape == std::vector<int64_t>{3});
  CHECK(values_of<int64_t>(i8) ==
        std::vector<int64_t>{-(int64_t{1} << 40), 0, (int64_t{1} << 40) + 5});

  const NpyArray f4 = deco::read_npy(dir / "f4_3d.npy");
  CHECK(f4.descr == "<f4");
  CHECK(f4.shape == std::vector<int64_t>{2, 3, 4});
  std::vector<float> want_f4;
  for (int i = 0; i < 24; ++i) want_f4.push_back(static_cast<float>(i) * 0.5f - 1.25f);
  CHECK(values_of<float>(f4) == want_f4);

  const NpyArray f8 = deco::read_npy(dir / "f8_0d.npy");
  CHECK(f8.shape.empty());
  CHECK(values_of<double>(f8) == std::vector<double>{2.5});

  // Header versions 2.0 and 3.0 (u32 header length).
  const NpyArray v2 = deco::read_npy(dir / "v2.npy");
  CHECK(v2.shape == std::vector<int64_t>{3, 2});
  CHECK(values_of<int64_t>(v2) == std::vector<int64_t>{0, 1, 2, 3, 4, 5});
  CHECK(values_of<int32_t>(deco::read_npy(dir / "v3.npy")) == std::vector<int32_t>{0, 1, 2, 3});

  // Big-endian files read as stored; the descr tells the caller.
  const NpyArray be = deco::read_npy(dir / "big_endian.npy");
  CHECK(be.descr == ">i4");
  CHECK(be.bytes[3] == 0);
  CHECK(be.bytes[7] == 1);

  // uint16 tokens, a common format for GPT-2-sized vocabularies.
  const deco::TokenArray t = deco::read_token_npy(dir / "u2_tokens.npy", 10, 8);
  CHECK(t.rows == 2);
  CHECK(t.cols == 5);
  CHECK(t.tokens == std::vector<int32_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9});

  const std::string where = dir / "fortran.npy";
  CHECK(error_of([&] { deco::read_npy(where); }) ==
        where + " is stored in Fortran (column-major) order, which deco does not read; re-save it "
                "in C order with numpy.save(path, numpy.ascontiguousarray(a))");
  CHECK(error_of([&] { deco::read_token_npy(dir / "big_endian.npy", 100, 8); }) ==
        dir / "big_endian.npy" + " is big-endian (dtype '>i4'); save it little-endian with "
                                 "numpy.save(path, tokens.astype('<i4'))");
  CHECK(error_of([&] { deco::read_token_npy(dir / "float_tokens.npy", 100, 8); }) ==
        dir / "float_tokens.npy" + " holds floating-point values (dtype '<f4'); token ids must be "
                                   "integers: save them with numpy.save(path, "
                                   "tokens.astype(numpy.int32))");
  CHECK_THAT(error_of([&] { deco::read_npy(dir / "objects.npy"); }),
             Contains("holds dtype '|O' (pickled Python objects), which deco does not read"));
  CHECK_THAT(error_of([&] { deco::read_npy(dir / "archive.npz"); }),
             Contains("archive.npz is a zip archive (an .npz from numpy.savez?), not a .npy file"));
}

TEST_CASE("npy: NumPy reads the files deco writes", "[io]") {
  if (!have_numpy()) {
    WARN("skipped: " << kPython << " with numpy not found");
    return;
  }
  TempDir dir;
  int rc = 0;

  const std::vector<int32_t> i4 = {5, -6, 7, 2147483647, -2147483647 - 1, 0};
  deco::write_npy(dir / "i4.npy", "<i4", {2, 3}, i4.data());
  CHECK(check_io("load-npy " + (dir / "i4.npy"), &rc) ==
        "<i4\n2,3\nFalse\n5 -6 7 2147483647 -2147483648 0\n");
  CHECK(rc == 0);

  const std::vector<int64_t> i8 = {int64_t{1} << 50, -3};
  deco::write_npy(dir / "i8.npy", "<i8", {2}, i8.data());
  CHECK(check_io("load-npy " + (dir / "i8.npy"), &rc) == "<i8\n2\nFalse\n1125899906842624 -3\n");

  // Floats: NumPy prints repr() of each value, which must parse back to the
  // exact float32 we wrote.
  std::vector<float> f4(24);
  for (size_t i = 0; i < f4.size(); ++i) f4[i] = static_cast<float>(i) / 7.0f - 1.0f;
  deco::write_npy(dir / "f4.npy", "<f4", {2, 3, 4}, f4.data());
  std::istringstream lines(check_io("load-npy " + (dir / "f4.npy"), &rc));
  REQUIRE(rc == 0);
  std::string descr, shape, fortran;
  std::getline(lines, descr);
  std::getline(lines, shape);
  std::getline(lines, fortran);
  CHECK(descr == "<f4");
  CHECK(shape == "2,3,4");
  CHECK(fortran == "False");
  std::vector<float> back;
  double v;
  while (lines >> v) back.push_back(static_cast<float>(v));
  CHECK(back == f4);

  // NumPy's own writer produces the same bytes as ours for the same array.
  REQUIRE(std::system((std::string(kPython) + " -c \"import numpy as np; np.save('" +
                       (dir / "np_i4.npy") +
                       "', np.array([[5, -6, 7], [2147483647, -2147483648, 0]], dtype='<i4'))\"")
                          .c_str()) == 0);
  CHECK(read_file(dir / "np_i4.npy") == read_file(dir / "i4.npy"));
}

TEST_CASE("npy: malformed files give clear errors", "[io]") {
  TempDir dir;
  const std::string good = valid_file(dir);
  const std::string path = dir / "bad.npy";
  auto read_bad = [&](const std::string& bytes) {
    write_file(path, bytes);
    return error_of([&] { deco::read_npy(path); });
  };

  CHECK(error_of([&] { deco::read_npy(dir / "missing.npy"); }) ==
        "cannot read " + (dir / "missing.npy") + ": No such file or directory; check the path");
  CHECK(read_bad("PK\x03\x04 not numpy at all") ==
        path + " is a zip archive (an .npz from numpy.savez?), not a .npy file; save a single "
               "array with numpy.save instead");
  CHECK(read_bad("\x93NUMPZ" + good.substr(6)) ==
        path + " is not a NumPy .npy file (it does not start with the \\x93NUMPY magic); save the "
               "array with numpy.save");
  CHECK(read_bad("") == path + " is not a NumPy .npy file (it does not start with the \\x93NUMPY "
                               "magic); save the array with numpy.save");

  std::string v4 = good;
  v4[6] = 4;
  CHECK(read_bad(v4) == path + " has .npy format version 4.0, which deco does not read (versions "
                               "1.0, 2.0 and 3.0 are supported)");

  CHECK(read_bad(good.substr(0, 9)) == path + " is truncated: it ends inside the .npy header");
  CHECK(read_bad(good.substr(0, 40)) ==
        path + " is truncated: its .npy header claims 118 bytes but the file has only 30 after the "
               "preamble");

  // A version 1.0 file with any header text and data, padded as NumPy pads.
  auto with_header = [&](const std::string& dict, const std::string& data) {
    std::string header = dict;
    while ((10 + header.size() + 1) % 64 != 0) header += ' ';
    header += '\n';
    std::string bytes = std::string("\x93NUMPY\x01\x00", 8);
    bytes += static_cast<char>(header.size() & 0xff);
    bytes += static_cast<char>(header.size() >> 8);
    return read_bad(bytes + header + data);
  };
  const std::string data(24, '\0');
  CHECK(with_header("{'descr': '<i4', 'fortran_order': False, 'shapf': (2, 3), }", data) ==
        path + " has a malformed .npy header (it has the unknown key 'shapf'): {'descr': '<i4', "
               "'fortran_order': False, 'shapf': (2, 3), }");
  CHECK_THAT(with_header("{'fortran_order': False, 'shape': (2, 3), }", data),
             Contains("(it needs each of 'descr', 'fortran_order' and 'shape' exactly once)"));
  CHECK_THAT(with_header("{'descr': '<i4', 'descr': '<i4', 'fortran_order': False, "
                         "'shape': (2, 3), }", data),
             Contains("(it needs each of 'descr', 'fortran_order' and 'shape' exactly once)"));
  CHECK_THAT(with_header("{'descr': '<i4', 'fortran_order': False, 'shape': (2, -3), }", data),
             Contains("('shape' is not a tuple of integers)"));
  CHECK_THAT(with_header("{'descr': '<i4', 'fortran_order': 0, 'shape': (2, 3), }", data),
             Contains("('fortran_order' is not True/False)"));
  CHECK_THAT(with_header("{'descr': [('a', '<i4')], 'fortran_order': False, 'shape': (2,), }",
                         std::string(8, '\0')),
             Contains("(it describes a structured (record) dtype)"));
  CHECK_THAT(with_header("{'descr': '<i4', 'fortran_order': False, 'shape': (2, 3), } x", data),
             Contains("(there is text after the closing '}')"));
  CHECK_THAT(with_header("not a dict", data), Contains("(it does not start with '{')"));
  CHECK(with_header("{'descr': '<U4', 'fortran_order': False, 'shape': (2, 3), }", data) ==
        path + " holds dtype '<U4', which deco does not read; expected a plain numeric dtype such "
               "as '<i4', '<i8' or '<f4'");
  CHECK(with_header("{'descr': '<i4', 'fortran_order': True, 'shape': (2, 3), }", data) ==
        path + " is stored in Fortran (column-major) order, which deco does not read; re-save it "
               "in C order with numpy.save(path, numpy.ascontiguousarray(a))");
  // Fortran order of a single row has the same bytes as C order: accepted.
  CHECK(with_header("{'descr': '<i4', 'fortran_order': True, 'shape': (1, 6), }", data) ==
        "<no deco::Error thrown>");
  // Double quotes, no trailing comma and Python 2 longs are valid Python too.
  CHECK(with_header("{\"descr\": \"<i4\", \"fortran_order\": False, \"shape\": (2L, 3L)}", data) ==
        "<no deco::Error thrown>");
  // A header claiming an absurd shape must not overflow the size arithmetic.
  CHECK_THAT(with_header("{'descr': '<i8', 'fortran_order': False, "
                         "'shape': (9999999999, 9999999999, 9999999999), }", data),
             Contains("is truncated: its header describes shape [9999999999, 9999999999, "
                      "9999999999] of '<i8' (more than 2^64 bytes of data)"));

  CHECK(read_bad(good.substr(0, good.size() - 3)) ==
        path + " is truncated: its header describes shape [2, 3] of '<i4' (24 bytes of data) but "
               "only 21 bytes follow the header");
  CHECK(read_bad(good + "xyz") ==
        path + " has 3 trailing bytes after the 24 bytes of data its header describes (shape "
               "[2, 3] of '<i4'); it is not a single array written by numpy.save");
}

TEST_CASE("npy: token arrays are checked against the config", "[io]") {
  TempDir dir;
  const std::string path = dir / "B.npy";

  SECTION("valid int32 and int64 files") {
    const std::vector<int32_t> i4 = {0, 1, 2, 511, 3, 4, 5, 6};
    deco::write_npy(path, "<i4", {2, 4}, i4.data());
    const deco::TokenArray t = deco::read_token_npy(path, 512, 3);
    CHECK(t.rows == 2);
    CHECK(t.cols == 4);
    CHECK(t.tokens == i4);
    const std::vector<int64_t> i8 = {7, 0, 1, 2};
    deco::write_npy(path, "<i8", {1, 4}, i8.data());
    CHECK(deco::read_token_npy(path, 8, 3).tokens == std::vector<int32_t>{7, 0, 1, 2});
    const std::vector<uint8_t> u1 = {255, 0};
    deco::write_npy(path, "|u1", {1, 2}, u1.data());
    CHECK(deco::read_token_npy(path, 256, 1).tokens == std::vector<int32_t>{255, 0});
  }
  SECTION("not 2-D") {
    const std::vector<int32_t> v(24, 0);
    deco::write_npy(path, "<i4", {2, 3, 4}, v.data());
    CHECK(error_of([&] { deco::read_token_npy(path, 512, 8); }) ==
          path + " has shape [2, 3, 4]; expected shape [batch, seq_length+1] (one row of "
                 "seq_length + 1 token ids per sequence)");
    deco::write_npy(path, "<i4", {24}, v.data());
    CHECK_THAT(error_of([&] { deco::read_token_npy(path, 512, 8); }),
               Contains("has shape [24]; expected shape [batch, seq_length+1]"));
  }
  SECTION("float tokens") {
    const std::vector<float> v(8, 1.0f);
    deco::write_npy(path, "<f4", {2, 4}, v.data());
    CHECK(error_of([&] { deco::read_token_npy(path, 512, 8); }) ==
          path + " holds floating-point values (dtype '<f4'); token ids must be integers: save "
                 "them with numpy.save(path, tokens.astype(numpy.int32))");
  }
  SECTION("big-endian tokens") {
    const std::vector<int32_t> v(8, 0);
    deco::write_npy(path, ">i4", {2, 4}, v.data());
    CHECK(error_of([&] { deco::read_token_npy(path, 512, 8); }) ==
          path + " is big-endian (dtype '>i4'); save it little-endian with "
                 "numpy.save(path, tokens.astype('<i4'))");
  }
  SECTION("out-of-range ids") {
    std::vector<int32_t> v(4 * 20, 1);
    v[3 * 20 + 17] = 70000;
    deco::write_npy(path, "<i4", {4, 20}, v.data());
    CHECK(error_of([&] { deco::read_token_npy(path, 512, 64); }) ==
          path + ": token id 70000 at [3, 17] is outside the vocabulary [0, 512) of the config; "
                 "the file was tokenized for a different vocabulary (vocab_size must exceed every "
                 "id in the file)");
    v[3 * 20 + 17] = 1;
    v[5] = -1;
    deco::write_npy(path, "<i4", {4, 20}, v.data());
    CHECK_THAT(error_of([&] { deco::read_token_npy(path, 512, 64); }),
               Contains(": token id -1 at [0, 5] is outside the vocabulary [0, 512)"));
    // An id exactly vocab_size is already outside.
    const std::vector<uint64_t> u8 = {512, 0};
    deco::write_npy(path, "<u8", {1, 2}, u8.data());
    CHECK_THAT(error_of([&] { deco::read_token_npy(path, 512, 64); }),
               Contains(": token id 512 at [0, 0] is outside"));
    const std::vector<uint64_t> huge = {~uint64_t{0}, 0};
    deco::write_npy(path, "<u8", {1, 2}, huge.data());
    CHECK_THAT(error_of([&] { deco::read_token_npy(path, 512, 64); }),
               Contains(": token id 18446744073709551615 at [0, 0] is outside"));
  }
  SECTION("rows too long or too short") {
    const std::vector<int32_t> v(4097, 0);
    deco::write_npy(path, "<i4", {1, 4097}, v.data());
    CHECK(error_of([&] { deco::read_token_npy(path, 512, 2048); }) ==
          path + ": sequences of 4097 tokens need seq_length >= 4096 (each row is seq_length + 1 "
                 "tokens), but the config has seq_length 2048; raise seq_length or cut the rows "
                 "to 2049 tokens");
    CHECK(deco::read_token_npy(path, 512, 4096).cols == 4097);
    deco::write_npy(path, "<i4", {3, 1}, v.data());
    CHECK(error_of([&] { deco::read_token_npy(path, 512, 8); }) ==
          path + " has rows of 1 token; each row needs at least 2 (seq_length + 1 tokens: inputs "
                 "row[:-1], next-token labels row[1:])");
    deco::write_npy(path, "<i4", {0, 5}, nullptr);
    CHECK_THAT(error_of([&] { deco::read_token_npy(path, 512, 8); }),
               Contains("has no rows (shape [0, 5])"));
  }
  SECTION("Fortran order") {
    const std::string good = valid_file(dir);
    std::string bytes = good;
    const std::string from = "'fortran_order': False", to = "'fortran_order': True ";
    bytes.replace(bytes.find(from), from.size(), to);
    write_file(path, bytes);
    CHECK_THAT(error_of([&] { deco::read_token_npy(path, 512, 8); }),
               Contains("B.npy is stored in Fortran (column-major) order"));
  }
}
