// Serve a pruned model from C++: load the AOTInductor package that scripts/export_aoti.py
// wrote, score the batch saved next to it and check that the scores equal Python's,
// element for element. Run by ctest (CMakeLists.txt) and by bench/bench_serve_memory.py.
//
//   serve_aoti PACKAGE.pt2 BATCH.pt
//
// BATCH.pt is a torch.save'd dict {"inputs": [tensor, ...], "expected": tensor}: the
// model's positional inputs and the scores the eager Python model gave for them.
// The package calls torch.ops.mixemb.* through AOTInductor's proxy executor, which finds
// them in the dispatcher: this program is linked with mixemb_ops, whose static
// initializers register them.
//
// Prints one line per step and the process's memory (/proc/self/status, KiB) before the
// package is loaded, after it is loaded and after the batch is scored:
//   memory_kib step=<step> rss=<VmRSS> anon=<RssAnon> file=<RssFile> peak=<VmHWM>
// Exit status 0 when the scores are equal, 1 otherwise (or on any error, printed as one
// line), 2 on bad usage.
#include <ATen/ATen.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/csrc/jit/serialization/pickle.h>

#include <fstream>
#include <iostream>
#include <iterator>
#include <string>
#include <vector>

namespace {

// One /proc/self/status field ("VmRSS", ...) in KiB, or -1 where the file lacks it.
long status_kib(const std::string& field) {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind(field + ":", 0) == 0) {
      return std::stol(line.substr(field.size() + 1));
    }
  }
  return -1;
}

void print_memory(const char* step) {
  std::cout << "memory_kib step=" << step << " rss=" << status_kib("VmRSS")
            << " anon=" << status_kib("RssAnon") << " file=" << status_kib("RssFile")
            << " peak=" << status_kib("VmHWM") << std::endl;
}

c10::IValue load_pickle(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) {
    throw std::runtime_error("cannot open " + path);
  }
  std::vector<char> bytes((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  return torch::jit::pickle_load(bytes);
}

// Scores the batch with the package; returns the exit status.
int serve(const std::string& package, const std::string& batch_path) {
  print_memory("start");
  auto batch = load_pickle(batch_path).toGenericDict();
  std::vector<at::Tensor> inputs;
  for (const auto& input : batch.at("inputs").toList()) {
    inputs.push_back(input.get().toTensor());
  }
  const at::Tensor expected = batch.at("expected").toTensor();

  torch::inductor::AOTIModelPackageLoader loader(package);
  print_memory("loaded");
  std::vector<at::Tensor> outputs;
  {
    // scoring needs no autograd; a serving process has none to pay for
    c10::InferenceMode guard;
    outputs = loader.run(inputs);
  }
  print_memory("scored");

  if (outputs.size() != 1) {
    std::cerr << "FAILED: the package returned " << outputs.size() << " outputs, expected 1\n";
    return 1;
  }
  const at::Tensor& scores = outputs[0];
  if (scores.sizes() != expected.sizes() || scores.dtype() != expected.dtype()) {
    std::cerr << "FAILED: scores are " << scores.sizes() << " " << scores.dtype()
              << ", Python's " << expected.sizes() << " " << expected.dtype() << "\n";
    return 1;
  }
  // bit for bit: export_aoti.py checked that the package reproduces the eager scores in
  // Python; here the same generated code and the same mixemb kernels run in C++
  const at::Tensor differ = scores.ne(expected).flatten();
  const int64_t count = differ.sum().item<int64_t>();
  if (count != 0) {
    std::cerr << "FAILED: " << count << " of " << differ.numel()
              << " scores differ from Python's; first at";
    const at::Tensor first = differ.nonzero().flatten().slice(0, 0, 8);
    for (int64_t k = 0; k < first.numel(); ++k) {
      std::cerr << " " << first[k].item<int64_t>();
    }
    std::cerr << "; max |diff| " << (scores - expected).abs().max().item<double>()
              << " (were mixemb._C and this program's mixemb_ops built from the same csrc/?)\n";
    return 1;
  }
  std::cout << "OK: " << scores.numel() << " scores equal Python's (first "
            << scores[0].item<float>() << ")" << std::endl;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: " << argv[0] << " PACKAGE.pt2 BATCH.pt\n";
    return 2;
  }
  try {
    return serve(argv[1], argv[2]);
  } catch (const std::exception& e) {
    // c10::Error's what() carries a backtrace after its first line
    const std::string what = e.what();
    std::cerr << "FAILED: " << what.substr(0, what.find('\n')) << "\n";
    return 1;
  }
}
