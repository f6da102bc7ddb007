// The shared per-element math (kernels/math.h), on the host.
#include <catch2/catch.hpp>

#include <cmath>

#include "kernels/math.h"

TEST_CASE("silu and its derivative", "[math]") {
  using deco::math::silu;
  using deco::math::silu_grad;
  CHECK(silu(0.0) == 0.0);
  CHECK(silu(2.0) == Approx(2.0 / (1.0 + std::exp(-2.0))).epsilon(1e-15));
  for (double x : {-3.0, -0.5, 0.1, 4.0})
    CHECK(silu_grad(x) == Approx((silu(x + 1e-6) - silu(x - 1e-6)) / 2e-6).epsilon(1e-8));
  CHECK(silu(1.5f) == Approx(1.5 / (1.0 + std::exp(-1.5))).epsilon(1e-6));
}
