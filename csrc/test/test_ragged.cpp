// C++ serving test: call mixemb's ops through the dispatcher, as a C++ process serving a
// pruned table would, and compare with dense arithmetic. Run by ctest (CMakeLists.txt).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdlib>
#include <iostream>
#include <optional>

namespace {

int failures = 0;

void expect(bool ok, const char* what) {
  if (!ok) {
    std::cerr << "FAILED: " << what << "\n";
    ++failures;
  }
}

// masks (N, 1) int64, values (nnz,), group_offsets for group size g, from a dense table.
std::tuple<at::Tensor, at::Tensor, at::Tensor> to_ragged(const at::Tensor& dense, int64_t g) {
  const int64_t n = dense.size(0), k = dense.size(1);
  auto present = dense.ne(0);
  auto masks = torch::zeros({n, 1}, torch::kLong);
  std::vector<int64_t> starts{0};
  for (int64_t r = 0; r < n; ++r) {
    int64_t m = 0, c = 0;
    for (int64_t j = 0; j < k; ++j) {
      if (present[r][j].item<bool>()) {
        m |= (int64_t{1} << j);
        ++c;
      }
    }
    masks[r][0] = m;
    starts.push_back(starts.back() + c);
  }
  std::vector<int64_t> groups;
  for (int64_t r = 0; r < n; r += g) groups.push_back(starts[r]);
  groups.push_back(starts.back());
  return {masks, dense.masked_select(present),
          torch::tensor(groups, torch::kLong)};
}

}  // namespace

int main() {
  torch::manual_seed(0);
  const int64_t n = 37, k = 19, g = 16;
  auto dense = torch::randn({n, k});
  dense.masked_fill_(torch::rand({n, k}) > 0.4, 0);
  dense[3].zero_();
  auto [masks, values, offsets] = to_ragged(dense, g);
  auto ids = torch::tensor({0, 3, 36, 17, 17, 5}, torch::kLong);

  auto gather = c10::Dispatcher::singleton()
                    .findSchemaOrThrow("mixemb::ragged_gather", "")
                    .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                      int64_t, int64_t, const at::Tensor&, bool, bool,
                                      std::optional<int64_t>,
                                      const std::optional<at::Tensor>&)>();
  // the kernel variant arguments at their defaults (one_warp, lookups_at_once); no
  // scale_bias (a float table)
  auto rows =
      gather.call(masks, values, offsets, g, k, ids, true, false, std::nullopt, std::nullopt);
  expect(torch::equal(rows, dense.index_select(0, ids)), "ragged_gather equals dense rows");

  // a serving loop's reused output buffer
  auto gather_out = c10::Dispatcher::singleton()
                        .findSchemaOrThrow("mixemb::ragged_gather_out", "")
                        .typed<void(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                    int64_t, int64_t, const at::Tensor&, const at::Tensor&,
                                    bool, bool, std::optional<int64_t>,
                                    const std::optional<at::Tensor>&)>();
  auto buffer = torch::full({ids.size(0), k}, std::nan(""));
  gather_out.call(masks, values, offsets, g, k, ids, buffer, true, false, std::nullopt,
                  std::nullopt);
  expect(torch::equal(buffer, dense.index_select(0, ids)), "ragged_gather_out fills out");
  gather_out.call(masks, values, offsets, g, k, ids.flip(0), buffer, true, false, 2,
                  std::nullopt);
  expect(torch::equal(buffer, dense.index_select(0, ids.flip(0))),
         "ragged_gather_out overwrites a reused buffer");

  auto dot = c10::Dispatcher::singleton()
                 .findSchemaOrThrow("mixemb::ragged_dot", "")
                 .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                   int64_t, const at::Tensor&, const at::Tensor&,
                                   const at::Tensor&, int64_t, int64_t, const at::Tensor&,
                                   const at::Tensor&, bool, bool, std::optional<int64_t>,
                                   const std::optional<at::Tensor>&,
                                   const std::optional<at::Tensor>&)>();
  auto other = ids.flip(0);
  auto scores = dot.call(masks, values, offsets, g, masks, values, offsets, g, k, ids, other,
                         true, false, std::nullopt, std::nullopt, std::nullopt);
  auto expected = (dense.index_select(0, ids) * dense.index_select(0, other)).sum(1);
  expect(torch::allclose(scores, expected, 1e-5, 1e-5), "ragged_dot equals dense dot");

  bool threw = false;
  try {
    gather.call(masks, values, offsets, g, k, torch::tensor({n}, torch::kLong), true, false,
                std::nullopt, std::nullopt);
  } catch (const c10::Error& e) {
    threw = std::string(e.what()).find("out of range") != std::string::npos;
  }
  expect(threw, "an out-of-range id raises a named error");

  threw = false;
  try {
    gather.call(masks, values, offsets, g, k, ids, true, false, 3, std::nullopt);
  } catch (const c10::Error& e) {
    threw = std::string(e.what()).find("lookups_at_once must be 1, 2, 4 or 8") !=
            std::string::npos;
  }
  expect(threw, "a kernel variant outside its values raises a named error");

  std::cout << (failures ? "FAILED" : "OK") << ": " << failures << " failure(s)\n";
  return failures ? EXIT_FAILURE : EXIT_SUCCESS;
}
