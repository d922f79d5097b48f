// Fused Curvature Kalman VSGD step on CPU: one pass per element over every state entry of a
// tensor. Per element it reads theta, g_hat, the five moments (m_g, m_h, P_gg, P_gh, P_hh), r,
// phi_g, phi_h, the ten tangent planes d(moment)/d phi_j, the two information planes R_j and
// the previous point, and writes all of them back (the previous point becomes theta); no
// full-size temporary exists. The arithmetic is that of vsgd_bayes.rules.curvature (the
// single source of truth; posterior_update, rate_of, parameter_step) and of its torch port
// vsgd_bayes/torch/_curvature_single_tensor.py, operation for operation and in the same
// order (built with -ffp-contract=off, so no product is fused into an addition), in the state
// dtype (float or double). The labels of derivations/15_curvature_kalman_vsgd.md are cited at
// each group below.
//
// The per-tensor scalars (t^-kappa and c / t, functions of each tensor's step count) are
// computed in Python by vsgd_bayes.torch._curvature_fused.step_scalars, as the single-tensor
// path computes them; the hyperparameters shared by the list come as arguments.
//
// The element function runs on at::vec::Vectorized<state_t> (the library of torch's own CPU
// kernels; exp is SLEEF's 1-ulp exp, as torch.exp's), a block's tail on a partial vector, so
// that every element takes the same instructions as torch's exp, whose tail is vectorised too.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

namespace {

using at::vec::Vectorized;

// ------------------------------------------------------------------ vector ops
template <typename T>
inline Vectorized<T> exp_(const Vectorized<T>& x) { return x.exp(); }

template <typename T>
inline Vectorized<T> sqrt_(const Vectorized<T>& x) { return x.sqrt(); }

template <typename T>
inline Vectorized<T> abs_(const Vectorized<T>& x) { return x.abs(); }

// max / min propagate a NaN of either operand, as torch.clamp_min / clamp_max do
template <typename T>
inline Vectorized<T> max_(const Vectorized<T>& a, const Vectorized<T>& b) {
  return at::vec::maximum(a, b);
}
template <typename T>
inline Vectorized<T> min_(const Vectorized<T>& a, const Vectorized<T>& b) {
  return at::vec::minimum(a, b);
}
// torch's clamp(lo, hi): min(max(x, lo), hi)
template <typename V>
inline V clamp_(const V& x, const V& lo, const V& hi) { return min_(max_(x, lo), hi); }

template <typename T>
inline Vectorized<T> less_(const Vectorized<T>& a, const Vectorized<T>& b) { return a < b; }
template <typename T>
inline Vectorized<T> greater_(const Vectorized<T>& a, const Vectorized<T>& b) { return a > b; }

// where(mask, if_true, if_false)
template <typename T>
inline Vectorized<T> select_(const Vectorized<T>& mask, const Vectorized<T>& if_true,
                             const Vectorized<T>& if_false) {
  return Vectorized<T>::blendv(if_false, if_true, mask);
}

// ------------------------------------------------------------------ the constants of a step
// The scalars of one tensor's step, broadcast to vectors V.
template <typename V>
struct Constants {
  V weight;            // w_t = t^-kappa
  V step_size;         // rho_t = c / t
  V max_ratio_change;  // Delta_phi
  V bound;             // CURVATURE_LOG_RATIO_BOUND
  V lr;                // eta
  V decay;             // 1 - eta lambda_wd
  V eps;               // epsilon
  V tiny;              // the state dtype's smallest normal number (torch.finfo.tiny)
  V zero, one, two;
  bool predictive;     // step_variance == "predictive"
  bool trust_region;   // curvature_step == "trust_region"
};

template <typename V, typename T>
Constants<V> constants_of(double weight, double step_size, double max_ratio_change,
                          double bound, double lr, double decay, double eps, bool predictive,
                          bool trust_region) {
  Constants<V> c;
  c.weight = V(static_cast<T>(weight));
  c.step_size = V(static_cast<T>(step_size));
  c.max_ratio_change = V(static_cast<T>(max_ratio_change));
  c.bound = V(static_cast<T>(bound));
  c.lr = V(static_cast<T>(lr));
  c.decay = V(static_cast<T>(decay));
  c.eps = V(static_cast<T>(eps));
  c.tiny = V(std::numeric_limits<T>::min());
  c.zero = V(T(0));
  c.one = V(T(1));
  c.two = V(T(2));
  c.predictive = predictive;
  c.trust_region = trust_region;
  return c;
}

// The state of one vector of elements: read, advanced, written back.
template <typename V>
struct Element {
  V point;           // theta_t, the point of this gradient (in the state dtype)
  V gradient;        // g_hat_t (negated when maximising)
  V g, h, p_gg, p_gh, p_hh;  // m_g, m_h, P_gg, P_gh, P_hh
  V r;               // noise variance
  V phi[2];          // ln lambda_g, ln lambda_h
  V tangent[2][5];   // d(m_g, m_h, P_gg, P_gh, P_hh) / d phi_j
  V information[2];  // R_j
  V previous;        // the previous point
  V new_param;       // output: theta_(t+1) in the state dtype
};

// One step of rules.curvature.step on one element: posterior_update, rate_of, parameter_step.
template <typename V>
inline void curvature_element(Element<V>& e, const Constants<V>& c) {
  const V displacement = e.point - e.previous;
  const V drift_to_noise = exp_(e.phi[0]);
  const V curvature_drift_to_noise = exp_(e.phi[1]);
  // [curvature-predict] m^- = (m_g + m_h Delta, m_h), P^- = F P F^T + diag(lambda_g, lambda_h)
  const V predicted_g = e.g + e.h * displacement;
  const V predicted_h = e.h;
  const V predicted_gg = e.p_gg + c.two * displacement * e.p_gh +
                         displacement * displacement * e.p_hh + drift_to_noise;
  const V predicted_gh = e.p_gh + displacement * e.p_hh;
  const V predicted_hh = e.p_hh + curvature_drift_to_noise;
  // [curvature-innovation] v = g_hat - m^-_g, S~ = P^-_gg + 1
  const V innovation = e.gradient - predicted_g;
  const V s = predicted_gg + c.one;
  // [curvature-noise-variance] r_t = r + w (v^2 / S~ - r)
  const V noise_variance = e.r + c.weight * (innovation * innovation / s - e.r);
  // [curvature-update] gains K = P^-[:, g] / S~, P_hh before its floor
  const V gain_gradient = predicted_gg / s;
  const V gain_curvature = predicted_gh / s;
  const V unfloored = predicted_hh - gain_curvature * predicted_gh;
  const V floored = less_(unfloored, c.zero);
  // [curvature-ratio-score] the quotients by r_t S~, floored at tiny
  const V scaled = max_(noise_variance * s, c.tiny);
  V new_phi[2];
  for (int j = 0; j < 2; ++j) {
    V* tangent = e.tangent[j];
    // [curvature-sensitivity] the predict map on the tangents, source d lambda_j / d phi_j
    const V source_gg = j == 0 ? drift_to_noise : c.zero;
    const V source_hh = j == 0 ? c.zero : curvature_drift_to_noise;
    const V t_g = tangent[0] + tangent[1] * displacement;
    const V t_h = tangent[1];
    const V t_gg = tangent[2] + c.two * displacement * tangent[3] +
                   displacement * displacement * tangent[4] + source_gg;
    const V t_gh = tangent[3] + displacement * tangent[4];
    const V t_hh = tangent[4] + source_hh;
    // [curvature-ratio-score] u_j = v dm^-_g / (r S~), J_j = (dm^-_g)^2 / (r S~)
    const V score = innovation * t_g / scaled;
    const V information_t = t_g * t_g / scaled;
    // [curvature-ratio-step] R_j = R + w (J - R), phi_j + clip(rho u_j / max(R_j, tiny))
    const V information = e.information[j] + c.weight * (information_t - e.information[j]);
    e.information[j] = information;
    V change = c.step_size * score / max_(information, c.tiny);
    change = clamp_(change, V(c.zero - c.max_ratio_change), c.max_ratio_change);
    new_phi[j] = clamp_(e.phi[j] + change, V(c.zero - c.bound), c.bound);
    // [curvature-sensitivity] tangents of [curvature-update]
    const V d_gain_gradient = t_gg / (s * s);
    const V d_gain_curvature = (t_gh - gain_curvature * t_gg) / s;
    const V d_curvature_variance =
        t_hh - d_gain_curvature * predicted_gh - gain_curvature * t_gh;
    tangent[0] = (c.one - gain_gradient) * t_g + d_gain_gradient * innovation;
    tangent[1] = t_h - gain_curvature * t_g + d_gain_curvature * innovation;
    tangent[2] = d_gain_gradient;
    tangent[3] = d_gain_curvature;
    tangent[4] = select_(floored, c.zero, d_curvature_variance);
  }
  // [curvature-update] m = m^- + K v, P_gg = K_g, P_gh = K_h, P_hh = max(P^-_hh - K_h P^-_gh, 0)
  e.g = predicted_g + gain_gradient * innovation;
  e.h = predicted_h + gain_curvature * innovation;
  e.p_gg = gain_gradient;
  e.p_gh = gain_curvature;
  e.p_hh = max_(unfloored, c.zero);
  e.r = noise_variance;
  e.phi[0] = new_phi[0];
  e.phi[1] = new_phi[1];
  // [curvature-step-variance] V = r (P_gg + lambda_g + 1) (ratios after the step), or r P_gg
  const V variance = c.predictive
                         ? noise_variance * (e.p_gg + exp_(new_phi[0]) + c.one)
                         : noise_variance * e.p_gg;
  // [curvature-trust-region] lr, or min(lr, |m_g| / m_h) where m_h > 0
  V rate = c.lr;
  if (c.trust_region) {
    const V newton = abs_(e.g) / max_(e.h, c.tiny);
    rate = select_(greater_(e.h, c.zero), min_(newton, c.lr), c.lr);
  }
  // [parameter-step] theta (1 - eta lambda_wd) - rate clip(m_g / max(sqrt(m_g^2 + V) + eps,
  // tiny), -1, 1)
  const V decayed = e.point * c.decay;
  const V denominator = sqrt_(e.g * e.g + variance) + c.eps;
  const V direction = clamp_(e.g / max_(denominator, c.tiny), V(c.zero - c.one), c.one);
  e.new_param = decayed - rate * direction;
}

// ------------------------------------------------------------------ one tensor
// Pointers to one tensor's state; tangent plane (j, i) of element k is
// tangents[(5 j + i) numel + k], information plane j is information[j numel + k].
template <typename param_t, typename grad_t, typename state_t>
struct Planes {
  param_t* param;
  const grad_t* grad;
  state_t *g, *h, *p_gg, *p_gh, *p_hh, *r, *phi_g, *phi_h, *tangents, *information,
      *previous;
  int64_t numel;
};

// `count` elements from k (a whole vector but at a block's tail); the lanes beyond are 0
// (their results are not stored).
template <typename V, typename T>
inline V load_(const T* data, int64_t count) {
  using state_t = typename V::value_type;
  if constexpr (std::is_same_v<T, state_t>) {
    return V::loadu(data, count);
  } else {
    state_t buffer[V::size()] = {};
    for (int64_t l = 0; l < count; ++l) buffer[l] = static_cast<state_t>(data[l]);
    return V::loadu(buffer);
  }
}

template <typename V, typename param_t, typename grad_t, typename state_t>
inline void load(Element<V>& e, const Planes<param_t, grad_t, state_t>& p, int64_t k,
                 int64_t count, const V& sign) {
  const int64_t n = p.numel;
  e.point = load_<V>(p.param + k, count);
  e.gradient = load_<V>(p.grad + k, count) * sign;  // exactly -g_hat when maximising
  e.g = load_<V>(p.g + k, count);
  e.h = load_<V>(p.h + k, count);
  e.p_gg = load_<V>(p.p_gg + k, count);
  e.p_gh = load_<V>(p.p_gh + k, count);
  e.p_hh = load_<V>(p.p_hh + k, count);
  e.r = load_<V>(p.r + k, count);
  e.phi[0] = load_<V>(p.phi_g + k, count);
  e.phi[1] = load_<V>(p.phi_h + k, count);
  for (int j = 0; j < 2; ++j) {
    for (int i = 0; i < 5; ++i) e.tangent[j][i] = load_<V>(p.tangents + (5 * j + i) * n + k, count);
    e.information[j] = load_<V>(p.information + j * n + k, count);
  }
  e.previous = load_<V>(p.previous + k, count);
}

template <typename V, typename param_t, typename grad_t, typename state_t>
inline void store(const Element<V>& e, const Planes<param_t, grad_t, state_t>& p, int64_t k,
                  int64_t count) {
  const int64_t n = p.numel;
  e.g.store(p.g + k, count);
  e.h.store(p.h + k, count);
  e.p_gg.store(p.p_gg + k, count);
  e.p_gh.store(p.p_gh + k, count);
  e.p_hh.store(p.p_hh + k, count);
  e.r.store(p.r + k, count);
  e.phi[0].store(p.phi_g + k, count);
  e.phi[1].store(p.phi_h + k, count);
  for (int j = 0; j < 2; ++j) {
    for (int i = 0; i < 5; ++i) e.tangent[j][i].store(p.tangents + (5 * j + i) * n + k, count);
    e.information[j].store(p.information + j * n + k, count);
  }
  e.point.store(p.previous + k, count);  // the previous point of the next step
  if constexpr (std::is_same_v<param_t, state_t>) {
    e.new_param.store(p.param + k, count);
  } else {  // a 16-bit parameter is rounded once, here
    state_t buffer[V::size()];
    e.new_param.store(buffer);
    for (int64_t l = 0; l < count; ++l) p.param[k + l] = static_cast<param_t>(buffer[l]);
  }
}

template <typename param_t, typename grad_t, typename state_t>
void curvature_tensor(const Planes<param_t, grad_t, state_t>& planes, double weight,
                      double step_size, double max_ratio_change, double bound, double lr,
                      double decay, double eps, bool maximize, bool predictive,
                      bool trust_region) {
  using Vec = Vectorized<state_t>;
  const auto constants = constants_of<Vec, state_t>(
      weight, step_size, max_ratio_change, bound, lr, decay, eps, predictive, trust_region);
  const Vec sign(maximize ? state_t(-1) : state_t(1));
  constexpr int64_t width = Vec::size();
  at::parallel_for(0, planes.numel, 1 << 12, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; k += width) {
      const int64_t count = std::min(width, end - k);
      Element<Vec> e;
      load(e, planes, k, count, sign);
      curvature_element(e, constants);
      store(e, planes, k, count);
    }
  });
}

void check(bool ok, const std::string& message) {
  TORCH_CHECK_VALUE(ok, "fused_curvature_kalman_vsgd: ", message);
}

template <typename param_t, typename grad_t, typename state_t>
Planes<param_t, grad_t, state_t> planes_of(const std::vector<at::Tensor*>& t) {
  Planes<param_t, grad_t, state_t> p;
  p.param = t[0]->data_ptr<param_t>();
  p.grad = t[1]->data_ptr<grad_t>();
  p.g = t[2]->data_ptr<state_t>();
  p.h = t[3]->data_ptr<state_t>();
  p.p_gg = t[4]->data_ptr<state_t>();
  p.p_gh = t[5]->data_ptr<state_t>();
  p.p_hh = t[6]->data_ptr<state_t>();
  p.r = t[7]->data_ptr<state_t>();
  p.phi_g = t[8]->data_ptr<state_t>();
  p.phi_h = t[9]->data_ptr<state_t>();
  p.tangents = t[10]->data_ptr<state_t>();
  p.information = t[11]->data_ptr<state_t>();
  p.previous = t[12]->data_ptr<state_t>();
  p.numel = t[0]->numel();
  return p;
}

// The gradient is of the parameter's dtype or of the state dtype.
template <typename param_t, typename state_t>
void dispatch_grad(const std::vector<at::Tensor*>& t, double weight, double step_size,
                   double max_ratio_change, double bound, double lr, double decay, double eps,
                   bool maximize, bool predictive, bool trust_region) {
  const auto grad_type = t[1]->scalar_type();
  if (grad_type == t[0]->scalar_type()) {
    curvature_tensor(planes_of<param_t, param_t, state_t>(t), weight, step_size,
                     max_ratio_change, bound, lr, decay, eps, maximize, predictive,
                     trust_region);
  } else {
    check(grad_type == t[2]->scalar_type(),
          "gradient dtype must be the parameter's or the state's");
    curvature_tensor(planes_of<param_t, state_t, state_t>(t), weight, step_size,
                     max_ratio_change, bound, lr, decay, eps, maximize, predictive,
                     trust_region);
  }
}

}  // namespace

// Steps every tensor of the lists in place. `step_scalars` holds 2 doubles per tensor
// (t^-kappa, c / t). Tensors must be contiguous CPU tensors; per tensor, the state (of one
// dtype: float with float, bfloat16 or half parameters, double with double ones), the
// tangents of 10 times and the information of 2 times the parameter's size.
void curvature_step(std::vector<at::Tensor> params, std::vector<at::Tensor> grads,
                    std::vector<at::Tensor> gradient_means,
                    std::vector<at::Tensor> curvature_means,
                    std::vector<at::Tensor> gradient_variances,
                    std::vector<at::Tensor> cross_covariances,
                    std::vector<at::Tensor> curvature_variances,
                    std::vector<at::Tensor> noise_variances,
                    std::vector<at::Tensor> log_drift_to_noises,
                    std::vector<at::Tensor> log_curvature_drift_to_noises,
                    std::vector<at::Tensor> ratio_sensitivities,
                    std::vector<at::Tensor> ratio_informations,
                    std::vector<at::Tensor> previous_points, std::vector<double> step_scalars,
                    double lr, double decay, double eps, double max_ratio_change,
                    double bound, bool maximize, bool predictive, bool trust_region) {
  const size_t n = params.size();
  std::vector<std::vector<at::Tensor>*> lists = {
      &params, &grads, &gradient_means, &curvature_means, &gradient_variances,
      &cross_covariances, &curvature_variances, &noise_variances, &log_drift_to_noises,
      &log_curvature_drift_to_noises, &ratio_sensitivities, &ratio_informations,
      &previous_points};
  for (auto* list : lists) check(list->size() == n, "lists of different lengths");
  check(step_scalars.size() == 2 * n, "expected 2 step scalars per tensor");
  for (size_t index = 0; index < n; ++index) {
    std::vector<at::Tensor*> t;
    for (auto* list : lists) t.push_back(&(*list)[index]);
    const int64_t numel = t[0]->numel();
    for (size_t i = 0; i < t.size(); ++i) {
      const int64_t planes = i == 10 ? 10 : (i == 11 ? 2 : 1);
      check(t[i]->numel() == planes * numel, "tensors of inconsistent sizes");
      check(t[i]->device().is_cpu(), "tensors must be on the CPU");
      check(t[i]->is_contiguous(), "tensors must be contiguous");
      if (i >= 3) check(t[i]->scalar_type() == t[2]->scalar_type(),
                        "state tensors of different dtypes");
    }
    if (numel == 0) continue;
    const double weight = step_scalars[2 * index];
    const double step_size = step_scalars[2 * index + 1];
    const auto param_type = t[0]->scalar_type();
    const auto state_type = t[2]->scalar_type();
    if (state_type == at::kDouble) {
      check(param_type == at::kDouble, "float64 state needs float64 parameters");
      dispatch_grad<double, double>(t, weight, step_size, max_ratio_change, bound, lr, decay,
                                    eps, maximize, predictive, trust_region);
    } else {
      check(state_type == at::kFloat, "state dtype must be float32 or float64");
      if (param_type == at::kFloat) {
        dispatch_grad<float, float>(t, weight, step_size, max_ratio_change, bound, lr, decay,
                                    eps, maximize, predictive, trust_region);
      } else if (param_type == at::kBFloat16) {
        dispatch_grad<at::BFloat16, float>(t, weight, step_size, max_ratio_change, bound, lr,
                                           decay, eps, maximize, predictive, trust_region);
      } else if (param_type == at::kHalf) {
        dispatch_grad<at::Half, float>(t, weight, step_size, max_ratio_change, bound, lr,
                                       decay, eps, maximize, predictive, trust_region);
      } else {
        check(false, "parameters must be float32, float64, bfloat16 or float16");
      }
    }
  }
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("curvature_step", &curvature_step,
        "Fused Curvature Kalman VSGD step on lists of contiguous CPU tensors");
}
