// Classify 28x28 PGM images with the toolkit's AOTInductor package (model.aoti.pt2), from C++ alone.
//
//   classify PACKAGE SHA256 IMAGE.pgm [IMAGE.pgm ...]
//
// SHA256 is the package's hash from manifest.json: the package is a shared library (code), so its bytes are
// hashed first, and the very bytes that matched are written to a private file and loaded from there. The
// normalization (mean, std) is read from the package's own metadata. Prints "IMAGE DIGIT PROBABILITY" per image.

#include <ATen/ops/empty.h>  // the one ATen function used; ATen/Functions.h doubles the build time
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include <unistd.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <iterator>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

// SHA-256 (FIPS 180-4) of a byte string, as 64 lowercase hex digits.
std::string sha256_hex(const std::vector<unsigned char>& data) {
  static const uint32_t k[64] = {
      0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
      0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
      0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
      0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
      0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
      0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
      0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
      0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};
  uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  std::vector<unsigned char> msg(data);
  const uint64_t bits = static_cast<uint64_t>(data.size()) * 8;
  msg.push_back(0x80);
  while (msg.size() % 64 != 56) msg.push_back(0);
  for (int i = 7; i >= 0; --i) msg.push_back(static_cast<unsigned char>(bits >> (8 * i)));
  auto rotr = [](uint32_t x, int n) { return (x >> n) | (x << (32 - n)); };
  for (size_t block = 0; block < msg.size(); block += 64) {
    uint32_t w[64];
    for (int i = 0; i < 16; ++i) {
      const unsigned char* p = &msg[block + 4 * i];
      w[i] = (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | uint32_t(p[3]);
    }
    for (int i = 16; i < 64; ++i) {
      uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
      uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
      w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
    for (int i = 0; i < 64; ++i) {
      uint32_t t1 = hh + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + k[i] + w[i];
      uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
      hh = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
    }
    h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += hh;
  }
  std::ostringstream hex;
  for (uint32_t v : h) {
    char part[9];
    std::snprintf(part, sizeof part, "%08x", v);
    hex << part;
  }
  return hex.str();
}

std::vector<unsigned char> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// The next header token of a PGM file, skipping whitespace and '#' comments.
std::string pgm_token(std::istream& in) {
  std::string token;
  while (in) {
    int c = in.get();
    if (c == '#') {
      while (in && c != '\n') c = in.get();
    } else if (std::isspace(c)) {
      if (!token.empty()) return token;
    } else if (c != EOF) {
      token.push_back(static_cast<char>(c));
    }
  }
  return token;
}

// The 784 pixels of a binary (P5) 28x28 8-bit PGM image: white digit on black, as MNIST.
std::array<unsigned char, 784> read_pgm(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path);
  const std::string magic = pgm_token(in), width = pgm_token(in), height = pgm_token(in), maxval = pgm_token(in);
  if (magic != "P5" || width != "28" || height != "28" || maxval != "255") {
    throw std::runtime_error(path + " is not a binary 28x28 8-bit PGM image (P5 28 28 255)");
  }
  std::array<unsigned char, 784> pixels{};
  if (!in.read(reinterpret_cast<char*>(pixels.data()), pixels.size())) {
    throw std::runtime_error(path + " is shorter than its 28x28 header says");
  }
  return pixels;
}

double metadata_number(const std::unordered_map<std::string, std::string>& meta, const std::string& key) {
  auto it = meta.find(key);
  if (it == meta.end()) throw std::runtime_error("the package's metadata has no " + key + "; export it again");
  double value = std::stod(it->second);
  if (!std::isfinite(value)) throw std::runtime_error("the package's metadata " + key + " is not a number");
  return value;
}

// Write `data` to a new private file (0600 in a fresh 0700 folder) and return its path.
std::string private_copy(const std::vector<unsigned char>& data, std::string& folder) {
  std::string templ = (std::getenv("TMPDIR") ? std::getenv("TMPDIR") : "/tmp") + std::string("/classify-XXXXXX");
  if (!mkdtemp(templ.data())) throw std::runtime_error("cannot make a temporary folder");
  folder = templ;
  const std::string path = folder + "/model.pt2";
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
  if (!out) throw std::runtime_error("cannot write " + path);
  return path;
}

int run(int argc, char** argv) {
  if (argc < 4) {
    std::cerr << "usage: classify PACKAGE SHA256 IMAGE.pgm [IMAGE.pgm ...]\n";
    return 2;
  }
  const std::string package = argv[1], expected = argv[2];
  const std::vector<unsigned char> bytes = read_file(package);
  if (sha256_hex(bytes) != expected) {
    std::cerr << "error: " << package << " does not match the SHA-256 given; refusing to load it\n";
    return 1;
  }
  std::vector<std::array<unsigned char, 784>> images;
  for (int i = 3; i < argc; ++i) images.push_back(read_pgm(argv[i]));

  std::string folder;
  const std::string copy = private_copy(bytes, folder);
  torch::inductor::AOTIModelPackageLoader loader(copy, "model");  // the CPU model
  unlink(copy.c_str());
  rmdir(folder.c_str());
  const auto meta = loader.get_metadata();
  const double mean = metadata_number(meta, "mean"), std_ = metadata_number(meta, "std");

  at::Tensor batch = at::empty({static_cast<int64_t>(images.size()), 1, 28, 28}, at::kFloat);
  float* x = batch.data_ptr<float>();
  for (size_t n = 0; n < images.size(); ++n) {
    for (size_t p = 0; p < 784; ++p) x[n * 784 + p] = static_cast<float>((images[n][p] / 255.0 - mean) / std_);
  }
  const at::Tensor log_probs = loader.run({batch})[0];
  const at::Tensor digits = log_probs.argmax(1);
  for (size_t n = 0; n < images.size(); ++n) {
    const int64_t digit = digits[n].item<int64_t>();
    std::printf("%s %lld %.4f\n", argv[3 + n], static_cast<long long>(digit),
                std::exp(log_probs[n][digit].item<float>()));
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::string what = e.what();
    std::cerr << "error: " << what.substr(0, what.find('\n')) << "\n";
    return 1;
  }
}
