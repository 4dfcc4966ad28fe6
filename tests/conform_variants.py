"""Deliberately deviating BitLinear layers for tests/test_conform.py, one deviation each.

Each is modelled on a way public BitLinear implementations deviate from the official b1.58 recipe, or on a
failure mode the recipe warns about, and overrides one piece of `Faq`: the FAQ's BitLinear written the plain way (float
matmul on dequantized tensors, scales in float32), which must pass every check, being the reference computed
another way. All take (in_features, out_features) like nn.Linear. The layers at the end are bad input.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

EPS = 1e-5


def ste(f, v):
    return v + (f(v) - v).detach()


class Faq(nn.Module):
    """y = F.linear(STE(Q, RMSNorm(x)), STE(T, W)) [+ bias], computed in float32, output in x's dtype."""

    norm_eps = 1e-5

    def __init__(self, in_features, out_features, bias=False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) * 0.02)
        self.bias = nn.Parameter(torch.randn(out_features) * 0.1) if bias else None

    def norm(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.norm_eps)

    def act_scale(self, x):  # int8 steps per unit
        return 127 / x.abs().amax(-1, keepdim=True).clamp(min=EPS)

    def act_round(self, v):
        return v.round()

    def act_quant(self, x):
        s = self.act_scale(x)
        return self.act_round(x * s).clamp(-128, 127) / s

    def weight_scale(self, w):
        return w.abs().mean().clamp(min=EPS)

    def weight_round(self, v):
        return v.round()

    def weight_quant(self, w):
        beta = self.weight_scale(w)
        return self.weight_round(w / beta).clamp(-1, 1) * beta

    def quantized(self, x):
        """(x_hat, w_hat) with the STEs."""
        xn = self.norm(x)
        return ste(self.act_quant, xn), ste(self.weight_quant, self.weight)

    def add_bias(self, y):
        return y if self.bias is None else y + self.bias

    def forward(self, x):
        xq, wq = self.quantized(x.float())
        return self.add_bias(F.linear(xq, wq)).to(x.dtype)


# ---- weight quantizer ------------------------------------------------------------------------------------------


class BinaryCodes(Faq):
    """kyegomez/BitNet: sign(W - mean W) * mean|W|, no zero code."""

    def weight_quant(self, w):
        return torch.sign(w - w.mean()) * w.abs().mean()


class MaxScale(Faq):
    def weight_scale(self, w):
        return w.abs().max().clamp(min=EPS)


class MedianScale(Faq):
    """BitNet b1.58 Reloaded's AbsMedian."""

    def weight_scale(self, w):
        return w.abs().median().clamp(min=EPS)


class PerRowScale(Faq):
    def weight_scale(self, w):
        return w.abs().mean(-1, keepdim=True).clamp(min=EPS)


class GroupScale(Faq):
    """One beta per group of 32 input columns in each row."""

    def weight_quant(self, w):
        g = w.reshape(w.shape[0], -1, 32)
        beta = g.abs().mean(-1, keepdim=True).clamp(min=EPS)
        return ((g / beta).round().clamp(-1, 1) * beta).reshape(w.shape)


class HalfUpWeights(Faq):
    """tiiuae/onebitllms Triton kernels: floor(v + 0.5)."""

    def weight_round(self, v):
        return torch.floor(v + 0.5)


class NoWeightSTE(Faq):
    """Quantized weights with no STE: round() has zero gradient."""

    def quantized(self, x):
        return ste(self.act_quant, self.norm(x)), self.weight_quant(self.weight)


class HardtanhWeightSTE(Faq):
    """STE on round() only, then hardtanh: zero gradient at the +-1 bound (pytorch/ao PR #4806)."""

    def weight_quant(self, w):
        beta = w.detach().abs().mean().clamp(min=EPS)
        return F.hardtanh(ste(torch.round, w / beta)) * beta

    def quantized(self, x):
        return ste(self.act_quant, self.norm(x)), self.weight_quant(self.weight)


# ---- activation quantizer ----------------------------------------------------------------------------------------


class NoActRounding(Faq):
    """kyegomez/BitNet 6cdb2ea: x * 127/absmax clamped, never rounded."""

    def act_round(self, v):
        return v


class AwayActs(Faq):
    """fla FusedBitLinear: libdevice.round, half away from zero."""

    def act_round(self, v):
        return torch.sign(v) * torch.floor(v.abs() + 0.5)


class PerTensorAct(Faq):
    def act_scale(self, x):
        return 127 / x.abs().amax().clamp(min=EPS)


class ActRange128(Faq):
    """x * 128/absmax, clamp(-128, 127): the absmax element clips and the grid is 128/absmax."""

    def act_scale(self, x):
        return 128 / x.abs().amax(-1, keepdim=True).clamp(min=EPS)


class HardtanhActSTE(Faq):
    """STE on round() only, then hardtanh(-128, 127): the absmax element (code 127) gets no gradient."""

    def quantized(self, x):
        xn = self.norm(x)
        s = self.act_scale(xn).detach()
        return F.hardtanh(ste(torch.round, xn * s), -128, 127) / s, ste(self.weight_quant, self.weight)


class NoActSTE(Faq):
    def quantized(self, x):
        return self.act_quant(self.norm(x)), ste(self.weight_quant, self.weight)


class Bf16Scales(Faq):
    """Scales computed in the input dtype (HF packed BitLinear computes s in the module dtype)."""

    def forward(self, x):
        xn = self.norm(x.float()).to(x.dtype)
        s = 127 / xn.abs().amax(-1, keepdim=True).clamp(min=EPS)  # in x.dtype
        xq = ste(lambda v: (v * s).round().clamp(-128, 127) / s, xn)
        w = self.weight.to(x.dtype)
        wq = ste(self.weight_quant, w)
        return F.linear(xq.float(), wq.float()).to(x.dtype)


class NoEps(Faq):
    """No eps floor on either scale: an all-zero token or weight tensor divides by zero."""

    def act_scale(self, x):
        return 127 / x.abs().amax(-1, keepdim=True)

    def weight_scale(self, w):
        return w.abs().mean()


# ---- norm, STE through it --------------------------------------------------------------------------------------


class NoNorm(Faq):
    def norm(self, x):
        return x


class LayerNormInside(Faq):
    """kyegomez/BitNet 6cdb2ea: a LayerNorm (mean subtracted) instead of RMSNorm."""

    def norm(self, x):
        return F.layer_norm(x, x.shape[-1:], eps=self.norm_eps)


class NormEps1e6(Faq):
    """HF LlamaRMSNorm default eps."""

    norm_eps = 1e-6


class NormEps1e8(Faq):
    """fla BitLinear: RMSNorm(eps=1e-8)."""

    norm_eps = 1e-8


class STEBypassesNorm(Faq):
    """Forward on norm(x), STE on x: the value is right, the gradient skips the norm's Jacobian."""

    def quantized(self, x):
        return x + (self.act_quant(self.norm(x)) - x).detach(), ste(self.weight_quant, self.weight)


# ---- output scale, bias --------------------------------------------------------------------------------------------


class MissingActDequant(Faq):
    """The int8 codes go into the matmul; 127/absmax is never undone."""

    def act_quant(self, x):
        return (x * self.act_scale(x)).round().clamp(-128, 127)


class InverseWeightScale(Faq):
    """Multiplies the codes by 1/beta: the inverse scale convention of HF's packed BitLinear."""

    def weight_quant(self, w):
        beta = self.weight_scale(w)
        return (w / beta).round().clamp(-1, 1) / beta


class ScaleOverWidth(Faq):
    """kyegomez/zeta SimpleRMSNorm: F.normalize(x) * dim**-0.5 = RMSNorm(x) / in_features."""

    def norm(self, x):
        return F.normalize(x, dim=-1) * x.shape[-1] ** -0.5


class BiasScaled(Faq):
    """HF AutoBitLinear offline: F.linear(x_q, codes, bias) * weight_scale, so the bias is scaled too."""

    def __init__(self, in_features, out_features, bias=True):
        super().__init__(in_features, out_features, bias)

    def forward(self, x):
        xq = ste(self.act_quant, self.norm(x.float()))
        beta = self.weight_scale(self.weight).detach()
        codes = ste(lambda u: u.round().clamp(-1, 1), self.weight / beta)  # STE on W / beta: * beta undoes it
        return (F.linear(xq, codes, self.bias) * beta).to(x.dtype)


class BiasIgnored(Faq):
    """kyegomez/BitNet, fla BitLinear: a bias parameter that forward never adds."""

    def __init__(self, in_features, out_features, bias=True):
        super().__init__(in_features, out_features, bias)

    def add_bias(self, y):
        return y


class BiasAdded(BiasIgnored):
    """1bitLLM, Falcon-Edge: the bias added after the matmul, unscaled (conforms)."""

    add_bias = Faq.add_bias


# ---- shapes --------------------------------------------------------------------------------------------------------


class Only3D(Faq):
    """tiiuae/onebitllms activation kernel: needs a 3-D [B, T, D] input."""

    def forward(self, x):
        if x.dim() != 3:
            raise ValueError(f"expected a 3-D [B, T, D] input, got {x.dim()}-D")
        return super().forward(x)


class WrongFlatten(Faq):
    """Flattens (B, T, K) in (T, B) order and reshapes back as (B, T): tokens of a 3-D batch trade places."""

    def forward(self, x):
        if x.dim() != 3:
            return super().forward(x)
        b, t, k = x.shape
        y = super().forward(x.transpose(0, 1).reshape(-1, k))
        return y.reshape(b, t, -1)


# ---- deviations the checker once missed or misread (issue 26) ---------------------------------------------------


class WeightGradTimesBeta(Faq):
    """STE on the latent weight straight to the integer codes, beta multiplied after: the forward is right, the
    latent-weight gradient is beta times the reference's."""

    def quantized(self, x):
        beta = self.weight_scale(self.weight).detach()
        codes = ste(lambda w: (w / beta).round().clamp(-1, 1), self.weight)
        return ste(self.act_quant, self.norm(x)), codes * beta


class InputGradTimesGamma(Faq):
    """STE on the normalised input straight to the int8 codes, divided by the scale after: the input gradient
    carries absmax/127."""

    def act_quant(self, x):
        s = self.act_scale(x).detach()
        return ste(lambda v: (v * s).round().clamp(-128, 127), x) / s

    def quantized(self, x):
        return self.act_quant(self.norm(x)), ste(self.weight_quant, self.weight)


class PerTensorActNoEps(Faq):
    """One activation scale for the whole batch and no floor: a batch of only all-zero tokens gives 0/0."""

    def act_scale(self, x):
        return 127 / x.abs().amax()


class LayerNormNoRounding(LayerNormInside):
    """kyegomez/BitNet 6cdb2ea's shape: a LayerNorm, then x * 127/absmax clamped to the int8 range, never rounded."""

    def act_round(self, v):
        return v


class AffineLayerNorm(Faq):
    """An affine nn.LayerNorm (weight and bias, the bias the reference lacks) and a bias parameter never added:
    on a square layer (in == out) the norm's bias has the length of the layer's."""

    def __init__(self, in_features, out_features, bias=True):
        super().__init__(in_features, out_features, bias)
        self.ln = nn.LayerNorm(in_features, eps=self.norm_eps)

    def norm(self, x):
        return self.ln(x)

    def add_bias(self, y):
        return y


class SignActs(Faq):
    """kyegomez/BitNet BitLinear15b's activations: no norm, sign(x) (with an STE here, so only the forward
    deviates)."""

    def norm(self, x):
        return x

    def act_quant(self, x):
        return torch.sign(x)


class UpcastOutput(Faq):
    """Computes in float32 and returns float32 whatever the input dtype: a bf16 model's stream is upcast."""

    def forward(self, x):
        xq, wq = self.quantized(x.float())
        return self.add_bias(F.linear(xq, wq))


class SequenceNorm(Faq):
    """Normalises by the RMS over the whole (T, in) sequence (or the whole 2-D batch), not per token."""

    def norm(self, x):
        return x * torch.rsqrt(x.pow(2).mean((-2, -1), keepdim=True) + self.norm_eps)


class BiasInsideDequant(Faq):
    """The FAQ's inference form with a bias in the integer GEMM: (codes_x @ codes_w^T + bias) * gamma * beta."""

    def __init__(self, in_features, out_features, bias=True):
        super().__init__(in_features, out_features, bias)

    def forward(self, x):
        xn = self.norm(x.float())
        s, beta = self.act_scale(xn).detach(), self.weight_scale(self.weight).detach()
        cx = ste(lambda v: v.round().clamp(-128, 127), xn * s)
        cw = ste(lambda u: u.round().clamp(-1, 1), self.weight / beta)
        return ((F.linear(cx, cw, self.bias) * beta) / s).to(x.dtype)


class Unquantized(Faq):
    """The latent weights used as they are (weight_quant forgotten)."""

    def weight_quant(self, w):
        return w


class EpsOnRms(Faq):
    """huggingface/nanotron's BitNet norm: x / (rms + eps), the eps added to the RMS."""

    def norm(self, x):
        return x / (x.norm(dim=-1, keepdim=True) * x.shape[-1] ** -0.5 + self.norm_eps)


class PackedCodes(Faq):
    """A faithful inference layer that holds int8 codes and beta (buffers, no latent weight), as an exporter
    writes them; checked through load_packed_codes (--load conform_variants:load_packed_codes)."""

    def __init__(self, in_features, out_features):
        nn.Module.__init__(self)
        self.register_buffer("codes", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("beta", torch.ones(()))
        self.bias = None

    def forward(self, x):
        xq = ste(self.act_quant, self.norm(x.float()))
        return F.linear(xq, self.codes.float() * self.beta).to(x.dtype)


def load_packed_codes(layer, weight):
    """The user's loader for PackedCodes: the reference quantization of the probe weight into codes and beta."""
    beta = weight.abs().mean().clamp(min=EPS)
    layer.codes.copy_((weight / beta).round().clamp(-1, 1).to(torch.int8))
    layer.beta.fill_(float(beta))


class NeedsBias(Faq):
    """Like transformers' BitLinear(in, out, bias): a constructor with a required positional bias."""

    def __init__(self, in_features, out_features, bias):
        super().__init__(in_features, out_features, bias)


# ---- bad input ----------------------------------------------------------------------------------------------------


class NoWeight(nn.Module):
    def __init__(self, in_features, out_features):
        super().__init__()
        self.register_buffer("codes", torch.zeros(out_features, in_features, dtype=torch.int8))

    def forward(self, x):
        return F.linear(x, self.codes.float())


class TwoWeights(Faq):
    def __init__(self, in_features, out_features):
        super().__init__(in_features, out_features)
        self.shadow = nn.Parameter(torch.zeros(out_features, in_features))


class ConstructorRaises(nn.Module):
    def __init__(self, in_features, out_features):
        raise ValueError("this layer refuses to be built")


class ForwardRaises(Faq):
    def forward(self, x):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")


class WrongShape(Faq):
    def forward(self, x):
        return super().forward(x)[..., :-1]


class NanOutput(Faq):
    def forward(self, x):
        return super().forward(x) * float("nan")


class NeedsCuda(Faq):
    def forward(self, x):
        x = x.to("cuda")  # a fused kernel would launch here
        return super().forward(x)


class OverwritesLatent(Faq):
    """Writes the quantized weight back into the parameter (research notes §3 #6)."""

    def forward(self, x):
        with torch.no_grad():
            self.weight.copy_(self.weight_quant(self.weight))
        return super().forward(x)


# ---- conforming layers whose norm lives in the model (check with --norm-outside) ----------------------------------


class _WeightQuant(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w):
        dtype, w = w.dtype, w.float()
        s = 1.0 / w.abs().mean().clamp(min=EPS)
        return ((w * s).round().clamp(-1, 1) / s).to(dtype)

    @staticmethod
    def backward(ctx, grad):
        return grad.clone()


class _ActQuant(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        dtype, x = x.dtype, x.float()
        s = 127 / x.abs().max(dim=-1, keepdim=True).values.clamp(min=EPS)
        return ((x * s).round().clamp(-128, 127) / s).to(dtype)

    @staticmethod
    def backward(ctx, grad):
        return grad.clone()


class HFOnline(nn.Linear):
    """HF AutoBitLinear(online_quant=True): identity-backward quantizers in float32, no norm, bias added."""

    def forward(self, x):
        return F.linear(
            _ActQuant.apply(x),
            _WeightQuant.apply(self.weight).to(x.dtype),
            None if self.bias is None else self.bias.to(x.dtype),
        )


class OneBitLLM(nn.Linear):
    """1bitLLM utils_quant.BitLinear: detach STEs, quantizers in float32, the norm outside, bias added."""

    def forward(self, x):
        wq = self.weight + (_WeightQuant.apply(self.weight) - self.weight).detach()
        xq = x + (_ActQuant.apply(x) - x).detach()
        return F.linear(xq, wq.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))


class NormEps1e3(Faq):
    """A large norm eps: the exact .5 ties of the probes move, so only the eps is reported."""

    norm_eps = 1e-3
