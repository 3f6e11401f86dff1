"""Independent closed-form (polyexponential) reference for linear mammillary PK models.

This module is a *test oracle*.  It deliberately uses neither matrix exponentials nor ODE
solvers: every quantity is a sum of exponentials whose exponents and amplitudes are computed
from textbook closed forms.  Only numpy is used.

Units (the formulas are unit-agnostic, but the package convention is): time in h, rate
constants in 1/h, amounts in mg, volumes in L, concentrations in mg/L, infusion rates in mg/h.

Model
-----
Central compartment 1 (volume ``V1``), up to two peripheral compartments 2 and 3 exchanging
only with the central one (mammillary), elimination from the central compartment only::

    dA1/dt = -(k10 + k12 + k13) A1 + k21 A2 + k31 A3 + input(t)
    dA2/dt =  k12 A1 - k21 A2
    dA3/dt =  k13 A1 - k31 A3
    C(t)   =  A1(t) / V1

Polyexponential convention
--------------------------
For a unit (1 mg) bolus into the central compartment::

    A1(t) = sum_i a_i exp(-lambda_i t),   sum_i a_i = 1
    C(t)  = sum_i A_i exp(-lambda_i t),   A_i = a_i / V1,   sum_i A_i = 1 / V1

``macro_constants`` returns ``(lambdas, A)`` with ``A = a / V1`` (``V1`` defaults to 1, in
which case the coefficients are the dimensionless fractions ``a_i``).  Lambdas are sorted in
*decreasing* order (alpha > beta > gamma, the textbook order).

Exponents (lambdas) are the roots of the characteristic polynomial of the rate matrix,
``lambda^n - a2 lambda^(n-1) + ... = 0``:

* 1 compartment: ``lambda = k10``.
* 2 compartments: ``alpha, beta = (s +/- sqrt(s^2 - 4 k10 k21)) / 2`` with
  ``s = k10 + k12 + k21`` (Gibaldi & Perrier, *Pharmacokinetics*, 2nd ed., ch. 2); ``beta`` is
  computed as ``k10 k21 / alpha`` to avoid cancellation.
* 3 compartments: the cubic ``lambda^3 - a2 lambda^2 + a1 lambda - a0 = 0`` with::

      a2 = k10 + k12 + k13 + k21 + k31
      a1 = k10 k21 + k10 k31 + k21 k31 + k12 k31 + k13 k21
      a0 = k10 k21 k31

  solved with the trigonometric (Viete) formula for three real roots, as in Shafer's STANPUMP
  / the closed forms of Abuhelwa, Foster & Upton (2015) J Pharmacol Toxicol Methods 73:42-48,
  doi:10.1016/j.vascn.2015.03.004 (also used by rxode2 ``linCmt``)::

      p = a1 - a2^2/3,   q = -2 a2^3/27 + a1 a2/3 - a0
      lambda_k = a2/3 + 2 sqrt(-p/3) cos( acos( (3q/(2p)) sqrt(-3/p) )/3 - 2 pi k/3 )

The closed-form roots are then *polished* (typically 0-2 iterations) by a bracketed Newton
iteration on the secular equation (below).  For a mammillary model with positive rate
constants each root lies in its own interval between consecutive peripheral exit constants
(``0 < lambda_min < min(k21, k31) <= lambda_mid <= max(k21, k31) < lambda_max <= a2``), so the
polish always converges to the right root and gives full relative precision even when two
roots are nearly equal (where the Viete formula loses about half of the digits).

Amplitudes: the textbook partial-fraction formula is::

    a_i = prod_j (k_j1 - lambda_i) / prod_{m != i} (lambda_m - lambda_i)

(j over the peripheral compartments, m over the roots).  It is mathematically identical to the
residue of the central transfer function ``1 / f(-s)``::

    f(lambda) = k10 + k12 + k13 - lambda - k12 k21/(k21 - lambda) - k13 k31/(k31 - lambda)
    a_i = 1 / (-f'(lambda_i))
        = 1 / (1 + k12 k21/(k21 - lambda_i)^2 + k13 k31/(k31 - lambda_i)^2)

which is what is evaluated here: it is a sum of positive terms (no cancellation, every
``a_i > 0``) and stays accurate for nearly equal roots.  ``product_form_coefficients`` exposes
the textbook product formula for cross-checking.

Degenerate inputs are reduced exactly: a peripheral compartment with ``k1j == 0`` is never
filled and is dropped; one with ``k1j > 0`` but ``kj1 == 0`` is a sink, which the central
compartment sees as extra elimination (its eigenvalue 0 is then not reported).  If
``k21 == k31`` exactly, the middle eigenvalue is ``k21`` with amplitude exactly 0.

Input functions (all vectorised over ``t``; 0 for ``t < 0``)
------------------------------------------------------------
Bolus ``D`` at ``t = 0``:  ``C(t) = D sum A_i exp(-lambda_i t)``.

Zero-order infusion ``R`` (mg/h) over ``[0, T]``, with ``tau = min(t, T)``::

    C(t) = R sum_i A_i exp(-lambda_i (t - tau)) (1 - exp(-lambda_i tau)) / lambda_i

i.e. ``R sum A_i (1 - e^{-lambda_i t}) / lambda_i`` during the infusion and the end-of-infusion
value of each exponential term decaying as ``e^{-lambda_i (t - T)}`` afterwards.
``T = inf`` is allowed (continuous infusion).

Effect site, ``dCe/dt = ke0 (C - Ce)``, ``Ce(0) = 0``::

    bolus:     Ce(t) = D sum_i A_i ke0 (e^{-lambda_i t} - e^{-ke0 t}) / (ke0 - lambda_i)
    infusion:  Ce(t) = R sum_i A_i ke0 / (ke0 - lambda_i) * [E(lambda_i) - E(ke0)],
               E(c)  = int_{t-tau}^{t} e^{-c s} ds = e^{-c (t - tau)} (1 - e^{-c tau}) / c

All difference quotients are evaluated without cancellation, including ``ke0 == lambda_i``
(confluent limit ``D A_i ke0 t e^{-ke0 t}`` for the bolus): ``(e^{-a t} - e^{-b t})/(b - a)``
as ``t e^{-min(a,b) t} phi1(|b - a| t)`` with ``phi1(x) = -expm1(-x)/x``, and the infusion
bracket ``[E(a) - E(b)]/(b - a)`` via the product rule for divided differences into two
non-negative terms (see ``_int_dd_exp``; the second divided difference ``Phi2`` uses a short
centred Taylor series when its arguments are close).

Parent -> metabolite (Bateman): one-compartment parent (V, k) of which a fraction ``fm`` of the
elimination forms a one-compartment metabolite (Vm, km)::

    Cp(t) = D/V e^{-k t}
    Cm(t) = fm D k / (Vm (km - k)) (e^{-k t} - e^{-km t})
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "auc_inf_bolus",
    "central_bolus",
    "central_infusion",
    "css",
    "effect_site_bolus",
    "effect_site_infusion",
    "macro_constants",
    "parent_metabolite_bolus",
    "parent_metabolite_infusion",
    "product_form_coefficients",
    "vieta_cubic_roots",
]

_EPS = np.finfo(float).eps


# ---------------------------------------------------------------------------------------------
# Macro constants
# ---------------------------------------------------------------------------------------------


def vieta_cubic_roots(a2: float, a1: float, a0: float) -> np.ndarray:
    """Real roots of ``x^3 - a2 x^2 + a1 x - a0 = 0`` (three real roots assumed), decreasing.

    Trigonometric (Viete) solution of the depressed cubic ``y^3 + p y + q = 0``,
    ``x = y + a2/3``.  No polishing.
    """
    p = a1 - a2 * a2 / 3.0
    q = -2.0 * a2**3 / 27.0 + a1 * a2 / 3.0 - a0
    if p >= 0.0:  # triple root (p == q == 0) up to rounding
        return np.full(3, a2 / 3.0)
    m = 2.0 * math.sqrt(-p / 3.0)
    arg = 3.0 * q / (p * m)  # == (3q/(2p)) sqrt(-3/p)
    arg = min(1.0, max(-1.0, arg))
    theta = math.acos(arg) / 3.0
    roots = [a2 / 3.0 + m * math.cos(theta - 2.0 * math.pi * k / 3.0) for k in range(3)]
    return np.array(sorted(roots, reverse=True))


def _active_peripherals(k10, k12, k21, k13, k31):
    """Reduce to (effective k10, [(k1j, kj1), ...]) with k1j > 0 and kj1 > 0."""
    for name, val in (("k10", k10), ("k12", k12), ("k21", k21), ("k13", k13), ("k31", k31)):
        if not (np.isfinite(val) and val >= 0.0):
            raise ValueError(f"{name} must be finite and >= 0, got {val!r}")
    kel = float(k10)
    periph = []
    for k1j, kj1 in ((float(k12), float(k21)), (float(k13), float(k31))):
        if k1j == 0.0:
            continue  # never filled: invisible from the central compartment
        if kj1 == 0.0:
            kel += k1j  # sink: extra elimination as seen from the central compartment
            continue
        periph.append((k1j, kj1))
    if kel <= 0.0:
        raise ValueError("k10 must be > 0 (no elimination gives no polyexponential decay)")
    return kel, periph


def _secular(lam, kel, periph):
    """f(lambda) and f'(lambda) of the secular equation (roots == exponents)."""
    f = kel + sum(k1j for k1j, _ in periph) - lam
    fp = -1.0
    for k1j, kj1 in periph:
        d = kj1 - lam
        f -= k1j * kj1 / d
        fp -= k1j * kj1 / (d * d)
    return f, fp


def _polish(x0, lo, hi, kel, periph):
    """Root of the (strictly decreasing) secular function in the open bracket (lo, hi)."""
    x = x0 if lo < x0 < hi else 0.5 * (lo + hi)
    for _ in range(200):
        f, fp = _secular(x, kel, periph)
        if f == 0.0:
            return x
        if f > 0.0:
            lo = x
        else:
            hi = x
        xn = x - f / fp
        if not (lo < xn < hi):
            xn = 0.5 * (lo + hi)
        if abs(xn - x) <= 2.0 * _EPS * abs(x) or xn in (lo, hi):
            return xn
        x = xn
    return x


def _exponents_and_fractions(k10, k12=0.0, k21=0.0, k13=0.0, k31=0.0):
    kel, periph = _active_peripherals(k10, k12, k21, k13, k31)
    n = len(periph) + 1
    if n == 1:
        return np.array([kel]), np.array([1.0])

    s_out = kel + sum(k1j for k1j, _ in periph)  # total outflow rate constant of central
    if n == 2:
        ((_k1j, kj1),) = periph
        s = s_out + kj1
        alpha = 0.5 * (s + math.sqrt(max(s * s - 4.0 * kel * kj1, 0.0)))
        beta = kel * kj1 / alpha
        guesses = [alpha, beta]
        poles = [kj1]
    else:
        (k12_, k21_), (k13_, k31_) = periph
        a2 = s_out + k21_ + k31_
        a1 = kel * k21_ + kel * k31_ + k21_ * k31_ + k12_ * k31_ + k13_ * k21_
        a0 = kel * k21_ * k31_
        guesses = list(vieta_cubic_roots(a2, a1, a0))
        poles = sorted([k21_, k31_], reverse=True)

    # Brackets, decreasing order: (max pole, trace], (next pole, max pole), ..., (0, min pole).
    trace = s_out + sum(kj1 for _, kj1 in periph)
    edges = [trace * (1.0 + 4.0 * _EPS), *poles, 0.0]
    lambdas = np.empty(n)
    fracs = np.empty(n)
    for i in range(n):
        hi, lo = edges[i], edges[i + 1]
        if hi == lo:  # k21 == k31 exactly: eigenvalue k21, invisible from the central cpt
            lambdas[i] = hi
            fracs[i] = 0.0
            continue
        lam = _polish(guesses[i], lo, hi, kel, periph)
        _, fp = _secular(lam, kel, periph)
        lambdas[i] = lam
        fracs[i] = 1.0 / (-fp)
    return lambdas, fracs


def macro_constants(k10, k12=0.0, k21=0.0, k13=0.0, k31=0.0, *, V1=1.0):
    """Exponents and amplitudes of the central-compartment unit-bolus response.

    Returns ``(lambdas, A)`` (1-D float arrays, length 1, 2 or 3 = number of compartments
    visible from the central one), lambdas in 1/h sorted decreasing, such that for a 1 mg
    bolus at t = 0 ``C(t) = sum(A * exp(-lambdas * t))`` in mg/L when ``V1`` (L) is given.
    ``sum(A) == 1 / V1``.  With the default ``V1 = 1`` the ``A`` are the dimensionless amount
    fractions ``a_i`` (``sum == 1``).  See the module docstring for the formulas.
    """
    if not (V1 > 0):
        raise ValueError("V1 must be > 0")
    lambdas, fracs = _exponents_and_fractions(k10, k12, k21, k13, k31)
    return lambdas, fracs / V1


def product_form_coefficients(lambdas, k_exit):
    """Textbook amplitudes ``prod_j (k_j1 - l_i) / prod_{m != i} (l_m - l_i)``.

    ``lambdas``: all exponents; ``k_exit``: the peripheral exit constants ``k_j1``.  Returns
    amount fractions (divide by V1 for concentrations).  Cross-check only; cancels badly for
    nearly equal roots.
    """
    lam = np.asarray(lambdas, float)
    out = np.empty_like(lam)
    for i, li in enumerate(lam):
        num = np.prod([kj - li for kj in k_exit]) if len(k_exit) else 1.0
        den = np.prod([lm - li for m, lm in enumerate(lam) if m != i]) if lam.size > 1 else 1.0
        out[i] = num / den
    return out


# ---------------------------------------------------------------------------------------------
# Numerically stable elementary pieces
# ---------------------------------------------------------------------------------------------


def _phi1(x):
    """(1 - e^{-x}) / x for x >= 0, with phi1(0) = 1."""
    x = np.asarray(x, float)
    out = np.ones_like(x)
    nz = x != 0.0
    out[nz] = -np.expm1(-x[nz]) / x[nz]
    return out


def _g_moments(x, nmax):
    """g_n(x) = int_0^1 s^n e^{-x s} ds for n = 0..nmax, x >= 0 (list of arrays).

    Power series sum_k (-x)^k / (k! (n + k + 1)) for x < 4 (at most ~1.5 digits lost), upward
    recursion g_n = (n g_{n-1} - e^{-x}) / x for x >= 4 (error growth prod n/x <= 1 for
    nmax <= 7).
    """
    x = np.asarray(x, float)
    small = x < 4.0
    xs, xl = x[small], x[~small]
    out = []
    el = np.exp(-xl)
    g_prev = -np.expm1(-xl) / xl if xl.size else xl
    for n in range(nmax + 1):
        gn = np.empty_like(x)
        acc = np.zeros_like(xs)
        term = np.ones_like(xs)  # (-x)^k / k!
        for k in range(60):
            acc += term / (n + k + 1)
            term = term * (-xs) / (k + 1)
        gn[small] = acc
        if n > 0:
            g_prev = (n * g_prev - el) / xl
        gn[~small] = g_prev
        out.append(gn)
    return out


def _phi2(x, y):
    """Phi2(x, y) = (phi1(x) - phi1(y)) / (y - x) = int_{0<=v<=s<=1} e^{-x (s-v) - y v} dv ds.

    Positive, symmetric, Phi2(x, x) = g_1(x).  For |y - x| > 1e-2 max(1, m), m = (x+y)/2, the
    difference quotient is used (cancellation costs at most ~2 digits); otherwise the centred
    Taylor series  sum_{j odd} g_j(m) (h/2)^(j-1) / j!,  h = y - x, truncated after j = 7.
    """
    x, y = np.broadcast_arrays(np.asarray(x, float), np.asarray(y, float))
    m = 0.5 * (x + y)
    h = y - x
    near = np.abs(h) <= 1e-2 * np.maximum(1.0, m)
    out = np.empty_like(m)
    far = ~near
    out[far] = (_phi1(x[far]) - _phi1(y[far])) / h[far]
    if np.any(near):
        g = _g_moments(m[near], 7)
        hh = 0.5 * h[near]
        out[near] = g[1] + g[3] * hh**2 / 6.0 + g[5] * hh**4 / 120.0 + g[7] * hh**6 / 5040.0
    return out


def _dd_exp(a, b, t):
    """(e^{-a t} - e^{-b t}) / (b - a) for t >= 0, stable incl. a == b (-> t e^{-a t})."""
    t = np.asarray(t, float)
    lo = min(a, b)
    return t * np.exp(-lo * t) * _phi1(abs(b - a) * t)


def _int_exp(c, t, tau):
    """E(c) = int_{t-tau}^{t} e^{-c s} ds = e^{-c (t-tau)} tau phi1(c tau)."""
    return np.exp(-c * (t - tau)) * tau * _phi1(c * tau)


def _int_dd_exp(a, b, t, tau):
    """int_{t-tau}^{t} (e^{-a s} - e^{-b s}) / (b - a) ds  (0 <= tau <= t), i.e.
    (E(a) - E(b)) / (b - a).

    Evaluated without cancellation via the product rule for divided differences, with
    t0 = t - tau,  E(c) = e^{-c t0} * tau phi1(c tau):

        (E(a) - E(b)) / (b - a) = dd(a, b, t0) tau phi1(b tau) + e^{-a t0} tau^2 Phi2(a tau, b tau)

    (both terms >= 0; valid for a == b as well).
    """
    t = np.asarray(t, float)
    tau = np.asarray(tau, float)
    t0 = t - tau
    return _dd_exp(a, b, t0) * tau * _phi1(b * tau) + np.exp(-a * t0) * tau * tau * _phi2(
        a * tau, b * tau
    )


def _prep_t(t):
    t = np.asarray(t, float)
    tt = np.atleast_1d(t)
    pos = tt >= 0.0
    return t.shape, tt, pos


def _finish(shape, out):
    return out.reshape(shape)[()]


def _infusion_tau(tp, duration):
    if not (duration >= 0):
        raise ValueError("duration must be >= 0")
    return np.minimum(tp, duration)


# ---------------------------------------------------------------------------------------------
# Public concentration functions
# ---------------------------------------------------------------------------------------------


def central_bolus(t, dose, V1, k10, k12=0.0, k21=0.0, k13=0.0, k31=0.0):
    """Central concentration (mg/L) after an IV bolus ``dose`` (mg) at t = 0; 0 for t < 0.

    At t == 0 returns ``dose / V1`` (right-continuous).
    """
    shape, tt, pos = _prep_t(t)
    lam, A = macro_constants(k10, k12, k21, k13, k31, V1=V1)
    out = np.zeros_like(tt)
    tp = tt[pos]
    out[pos] = dose * sum(Ai * np.exp(-li * tp) for li, Ai in zip(lam, A, strict=True))
    return _finish(shape, out)


def central_infusion(t, rate, duration, V1, k10, k12=0.0, k21=0.0, k13=0.0, k31=0.0):
    """Central concentration (mg/L) for a zero-order infusion ``rate`` (mg/h) over
    ``[0, duration]`` h (``duration = inf`` allowed); 0 for t < 0; continuous in t."""
    shape, tt, pos = _prep_t(t)
    lam, A = macro_constants(k10, k12, k21, k13, k31, V1=V1)
    out = np.zeros_like(tt)
    tp = tt[pos]
    tau = _infusion_tau(tp, duration)
    out[pos] = rate * sum(Ai * _int_exp(li, tp, tau) for li, Ai in zip(lam, A, strict=True))
    return _finish(shape, out)


def effect_site_bolus(t, dose, V1, ke0, k10, k12=0.0, k21=0.0, k13=0.0, k31=0.0):
    """Effect-site concentration Ce (mg/L), dCe/dt = ke0 (C - Ce), Ce(0) = 0, after a bolus
    ``dose`` (mg) into the central compartment at t = 0; 0 for t < 0."""
    if not (ke0 > 0):
        raise ValueError("ke0 must be > 0")
    shape, tt, pos = _prep_t(t)
    lam, A = macro_constants(k10, k12, k21, k13, k31, V1=V1)
    out = np.zeros_like(tt)
    tp = tt[pos]
    out[pos] = dose * ke0 * sum(Ai * _dd_exp(li, ke0, tp) for li, Ai in zip(lam, A, strict=True))
    return _finish(shape, out)


def effect_site_infusion(t, rate, duration, V1, ke0, k10, k12=0.0, k21=0.0, k13=0.0, k31=0.0):
    """Effect-site concentration Ce (mg/L) for a zero-order infusion ``rate`` (mg/h) over
    ``[0, duration]`` h into the central compartment; Ce(0) = 0; 0 for t < 0."""
    if not (ke0 > 0):
        raise ValueError("ke0 must be > 0")
    shape, tt, pos = _prep_t(t)
    lam, A = macro_constants(k10, k12, k21, k13, k31, V1=V1)
    out = np.zeros_like(tt)
    tp = tt[pos]
    tau = _infusion_tau(tp, duration)
    out[pos] = (
        rate * ke0 * sum(Ai * _int_dd_exp(li, ke0, tp, tau) for li, Ai in zip(lam, A, strict=True))
    )
    return _finish(shape, out)


def auc_inf_bolus(dose, V1, k10):
    """AUC(0-inf) of the central concentration after a bolus: dose / (V1 k10)  (mg h/L).

    Independent of the distribution constants (= sum A_i / lambda_i * dose)."""
    return dose / (V1 * k10)


def css(rate, V1, k10):
    """Steady-state central concentration of a continuous infusion: rate / CL,
    CL = V1 k10 (L/h)."""
    return rate / (V1 * k10)


def parent_metabolite_bolus(t, dose, V, k, Vm, km, fm=1.0):
    """Bateman parent -> metabolite after a parent bolus ``dose`` (mg) at t = 0.

    One-compartment parent (V L, k 1/h); a fraction ``fm`` of its elimination forms a
    one-compartment metabolite (Vm L, km 1/h; amounts in parent-mg equivalents).
    Returns ``(Cp, Cm)`` in mg/L; ``k == km`` is handled (-> fm D k t e^{-k t} / Vm).
    """
    shape, tt, pos = _prep_t(t)
    cp = np.zeros_like(tt)
    cm = np.zeros_like(tt)
    tp = tt[pos]
    cp[pos] = dose / V * np.exp(-k * tp)
    cm[pos] = fm * dose * k / Vm * _dd_exp(k, km, tp)
    return _finish(shape, cp), _finish(shape, cm)


def parent_metabolite_infusion(t, rate, duration, V, k, Vm, km, fm=1.0):
    """As :func:`parent_metabolite_bolus` for a zero-order parent infusion ``rate`` (mg/h)
    over ``[0, duration]``.  Returns ``(Cp, Cm)`` in mg/L."""
    shape, tt, pos = _prep_t(t)
    cp = np.zeros_like(tt)
    cm = np.zeros_like(tt)
    tp = tt[pos]
    tau = _infusion_tau(tp, duration)
    cp[pos] = rate / V * _int_exp(k, tp, tau)
    cm[pos] = fm * rate * k / Vm * _int_dd_exp(k, km, tp, tau)
    return _finish(shape, cp), _finish(shape, cm)
