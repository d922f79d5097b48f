// Fused VSGD step on CPU: one pass per element, reading theta, g_hat, mu, b_g, b_ghat and
// writing theta, mu, b_g, b_ghat. The per-tensor scalars (functions of the step count) are
// computed in Python by vsgd_bayes.torch._foreach.step_constants, the single place where the
// schedules live; this file only evaluates the single-pass algebraic form of the update
// (derivations/09_fast_paths.md; its labels are cited in brackets at each group below):
//
//   k = b_g / (b_g + b_ghat),  e = g_hat - mu                            [fast-gain]
//   mu' = mu + k e                                                       [fast-mean]
//   sigma^2 = k b_ghat / a                                               [fast-variance]
//   b_g'    = (1 - rho_1) b_g    + rho_1 gamma     + rho_1/2 (sigma^2 + (k e)^2)
//   b_ghat' = (1 - rho_2) b_ghat + rho_2 K_g gamma + rho_2/2 (sigma^2 + ((1 - k) e)^2)
//                                                    [fast-residuals], [fast-targets], [svi-blend]
//   theta'  = theta (1 - eta lambda) - eta mu' / (sqrt(mu'^2 + sigma^2) + eps) [parameter-step]
//
// Arithmetic is in the state dtype (float or double); parameters and gradients may be
// float, double, bfloat16 or half. The inner loop has no branches and restrict pointers so
// that the compiler vectorises it (built with -O3 -fno-math-errno for the host's ISA).
#include <torch/extension.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <vector>

namespace {

// The per-tensor scalars of one step: vsgd_bayes.torch._foreach.StepConstants, field for
// field and in the same order (tests/test_derivations.py checks it). Python passes them as 7
// doubles per tensor in this order.
struct StepConstants {
  double inverse_shape;    // 1 / a, a the shape before the step
  double drift_keep;       // 1 - rho_1
  double drift_prior;      // rho_1 gamma
  double drift_half_step;  // rho_1 / 2
  double noise_keep;       // 1 - rho_2
  double noise_prior;      // rho_2 K_g gamma
  double noise_half_step;  // rho_2 / 2
};
constexpr size_t kStepConstantCount = sizeof(StepConstants) / sizeof(double);
static_assert(kStepConstantCount == 7, "StepConstants must hold exactly 7 doubles");

StepConstants step_constants_of(const double* values) {
  StepConstants c;
  c.inverse_shape = values[0];
  c.drift_keep = values[1];
  c.drift_prior = values[2];
  c.drift_half_step = values[3];
  c.noise_keep = values[4];
  c.noise_prior = values[5];
  c.noise_half_step = values[6];
  return c;
}

template <typename param_t, typename state_t>
void vsgd_block(param_t* __restrict__ theta, const param_t* __restrict__ grad,
                state_t* __restrict__ mean, state_t* __restrict__ drift_rate,
                state_t* __restrict__ noise_rate, int64_t begin, int64_t end,
                const StepConstants& c, double lr, double decay, double eps,
                double gradient_sign) {
  const state_t inverse_shape = static_cast<state_t>(c.inverse_shape);
  const state_t drift_keep = static_cast<state_t>(c.drift_keep);
  const state_t drift_prior = static_cast<state_t>(c.drift_prior);
  const state_t drift_half_step = static_cast<state_t>(c.drift_half_step);
  const state_t noise_keep = static_cast<state_t>(c.noise_keep);
  const state_t noise_prior = static_cast<state_t>(c.noise_prior);
  const state_t noise_half_step = static_cast<state_t>(c.noise_half_step);
  const state_t lr_ = static_cast<state_t>(lr);
  const state_t decay_ = static_cast<state_t>(decay);
  const state_t eps_ = static_cast<state_t>(eps);
  const state_t sign = static_cast<state_t>(gradient_sign);
#pragma omp simd
  for (int64_t i = begin; i < end; ++i) {
    const state_t g_hat = sign * static_cast<state_t>(grad[i]);
    const state_t mu = mean[i];
    const state_t b_g = drift_rate[i];
    const state_t b_ghat = noise_rate[i];
    // [fast-gain] the gain and the innovation
    const state_t gain = b_g / (b_g + b_ghat);
    const state_t innovation = g_hat - mu;
    // [fast-variance] sigma_t^2
    const state_t variance = gain * b_ghat * inverse_shape;
    // [fast-residuals] mu_t - mu_{t-1} = k e and g_hat - mu_t = (1 - k) e
    const state_t step_of_mean = gain * innovation;
    const state_t residual = innovation - step_of_mean;
    // [fast-mean] mu_t
    const state_t mu_new = mu + step_of_mean;
    // [svi-blend] of the targets [fast-targets]
    drift_rate[i] = drift_keep * b_g + drift_prior +
                    drift_half_step * (variance + step_of_mean * step_of_mean);
    noise_rate[i] = noise_keep * b_ghat + noise_prior +
                    noise_half_step * (variance + residual * residual);
    mean[i] = mu_new;
    // [parameter-step] theta (1 - eta lambda) - eta mu_t / (sqrt(mu_t^2 + sigma^2) + eps)
    const state_t denominator = std::sqrt(mu_new * mu_new + variance) + eps_;
    const state_t weight = static_cast<state_t>(theta[i]) * decay_ - lr_ * mu_new / denominator;
    theta[i] = static_cast<param_t>(weight);
  }
}

void check(bool ok, const std::string& message) {
  TORCH_CHECK_VALUE(ok, "fused_vsgd: ", message);
}

}  // namespace

// Steps every tensor of the lists in place. `constants` holds kStepConstantCount doubles per
// tensor (StepConstants, in field order). Tensors must be contiguous CPU tensors; the state of one dtype
// (float or double) for all; gradients of their parameter's dtype.
void vsgd_step(std::vector<at::Tensor> params, std::vector<at::Tensor> grads,
               std::vector<at::Tensor> means, std::vector<at::Tensor> drift_rates,
               std::vector<at::Tensor> noise_rates, std::vector<double> constants, double lr,
               double decay, double eps, bool maximize) {
  const size_t n = params.size();
  check(grads.size() == n && means.size() == n && drift_rates.size() == n &&
            noise_rates.size() == n && constants.size() == kStepConstantCount * n,
        "lists of different lengths");
  const double sign = maximize ? -1.0 : 1.0;
  for (size_t t = 0; t < n; ++t) {
    const at::Tensor &p = params[t], &g = grads[t], &m = means[t], &bg = drift_rates[t],
                     &bn = noise_rates[t];
    const int64_t numel = p.numel();
    check(g.numel() == numel && m.numel() == numel && bg.numel() == numel &&
              bn.numel() == numel,
          "tensors of different sizes");
    check(p.is_contiguous() && g.is_contiguous() && m.is_contiguous() &&
              bg.is_contiguous() && bn.is_contiguous(),
          "tensors must be contiguous");
    check(g.scalar_type() == p.scalar_type(), "gradient dtype differs from parameter dtype");
    check(m.scalar_type() == bg.scalar_type() && m.scalar_type() == bn.scalar_type(),
          "state tensors of different dtypes");
    if (numel == 0) continue;
    const StepConstants c = step_constants_of(constants.data() + kStepConstantCount * t);
    const auto state_type = m.scalar_type();
    check(state_type == at::kFloat || state_type == at::kDouble,
          "state dtype must be float32 or float64");
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, p.scalar_type(), "vsgd_step", [&] {
          using param_t = scalar_t;
          param_t* theta = p.data_ptr<param_t>();
          const param_t* grad = g.data_ptr<param_t>();
          if (state_type == at::kFloat) {
            float *mu = m.data_ptr<float>(), *b_g = bg.data_ptr<float>(),
                  *b_ghat = bn.data_ptr<float>();
            at::parallel_for(0, numel, 1 << 15, [&](int64_t begin, int64_t end) {
              vsgd_block<param_t, float>(theta, grad, mu, b_g, b_ghat, begin, end, c, lr,
                                         decay, eps, sign);
            });
          } else {
            double *mu = m.data_ptr<double>(), *b_g = bg.data_ptr<double>(),
                   *b_ghat = bn.data_ptr<double>();
            at::parallel_for(0, numel, 1 << 15, [&](int64_t begin, int64_t end) {
              vsgd_block<param_t, double>(theta, grad, mu, b_g, b_ghat, begin, end, c, lr,
                                          decay, eps, sign);
            });
          }
        });
  }
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("vsgd_step", &vsgd_step, "Fused VSGD step on lists of contiguous CPU tensors");
}
