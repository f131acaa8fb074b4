"""``QuantLinear``: the quantized form of :class:`golden_ptq.networks.layers.Linear`.

Its deployed parameters per scheme (W8A16 [+ zero point, groups], W8A8 static, W8A8 dynamic, the
m4 input shift) are the table of :mod:`golden_ptq.quant_math.layouts`: :meth:`QuantLinear.quantize`
keeps what it lists, :meth:`QuantLinear.deploy_placeholders` declares it, and tensor-parallel
sharding splits by it. W4A16 (``weight_bits=4``) keeps the W8A16 parameters; the int8 container
holds codes in ``[-7, 7]`` (``[-8, 7]`` asymmetric).
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np
from mindspore import Tensor, ops

from golden_ptq.networks.layers import Linear, compiling_graph, float_matmul
from golden_ptq.parallel.context import ChannelShards, TPContext, all_reduce, all_reduce_max, shard_mode
import golden_ptq.quant_cells.linear_kernels as kernels
from golden_ptq.quant_math import layouts
from golden_ptq.quant_cells.base import QuantCell
from golden_ptq.quant_cells.spec import LayerQuantSpec
from golden_ptq.quant_math import MinMaxObserver, quantize_weight, symmetric_scale
from golden_ptq.quant_math.functions import quantize, static_act_params
from golden_ptq.quant_math.functions import dequantize_weight, fake_quantize_weight, group_count, weight_codes
from golden_ptq.quant_math.input_sharing import shared


class QuantLinear(QuantCell):
    """Replaces a ``Linear``; takes over its weight (and bias) Parameters."""

    def __init__(self, linear: Linear, spec: LayerQuantSpec):
        super().__init__(spec)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias
        self.parallel = getattr(linear, "parallel", None)   # tensor parallel: "column", "row" or None
        self.tp = getattr(linear, "tp", None) or TPContext()
        self.input_observer = None
        self.use_observer(MinMaxObserver())
        self.weight_bits = 8                 # 4: W4A16 codes in the int8 container
        self.weight_clip = None              # per channel / group range ratios (AWQ's clip search)
        self.input_shift_value = None        # per input channel shift (m4), set before quantize()
        self.has_input_shift = False         # deployed form carries input_shift / shift_bias
        self.recorder = None                 # callable(x2 numpy) fed every input, when set
        self.output_unread = False           # a calibration pass that reads no output of this layer: no product
        self.bound_kernel = None             # set by bind_kernel() for compiled graphs
        self.kernel_extra = None             # the bound kernel's trailing operand (the group size), if any
        self.weight_preset = None            # (codes, scale, zero point) chosen by GPTQ: quantize() deploys them
        self.act_scale_dtype = "float32"     # "float16": static input scales rounded up to fp16 values

    def use_observer(self, observer: MinMaxObserver) -> None:
        """Observe the input with ``observer``; a row-parallel input is a shard of the whole tensor,
        so the observer reduces its per-tensor results over the ranks."""
        if self.shard == "row":
            observer.shards = ChannelShards(self.tp)
        self.input_observer = observer

    @property
    def shard(self) -> Optional[str]:
        """``"column"`` / ``"row"`` when this layer is split over more than one rank, else None."""
        return shard_mode(self.parallel, self.tp)

    @property
    def label(self) -> str:
        """The spec's label, with W4 for 4-bit weights."""
        label = self.spec.label
        return label.replace("W8", "W4", 1) if self.weight_bits == 4 and label.startswith("W8") else label

    # ----- calibration --------------------------------------------------------------------------
    def construct(self, x: Tensor) -> Tensor:
        """Eager products take ``x [..., K]`` as it comes (a reshaped view costs a copy before each native
        operator); observers, recorders and compiled graphs take its rows ``x2``."""
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if self.recorder is not None:
            self.recorder(self._host_rows(x, x2))
        if self.has_input_shift and self.quantized:
            x = x - self.input_shift
            x2 = x.reshape(-1, self.in_features)
        if self.bound_kernel is not None:  # the route chosen before compiling (graphs, and eager calls since)
            operand = x if isinstance(self.bound_kernel, ops.Custom) and not compiling_graph() else x2
            y = self.bound_kernel(operand, *self._kernel_args(x2))
        elif not self.quantized:
            if self.observing:
                seen = self._host_rows(x, x2)
                self.input_observer.update(seen if self.input_shift_value is None else seen - self.input_shift_value)
            if self.output_unread:   # observers and recorders have their input; nothing reads the product
                return ops.zeros(lead + (self.out_features,), x.dtype)
            y = float_matmul(x, self.weight)
        elif self.spec.act and self.spec.act_dynamic and self.shard == "row":
            y = kernels.a8w8_dynamic_absmax(x2, self.weight, self.weight_scale, self._whole_row_absmax(x2))
        elif self.spec.act and self.spec.act_dynamic:
            y = kernels.a8w8_dynamic(x, self.weight, self.weight_scale)
        elif self.spec.act:
            y = kernels.a8w8_static(x, self.weight, self.input_scale, self.input_zp, self.quant_bias,
                                    self.deq_scale)
        elif self.spec.group_size or not self.spec.weight_symmetric:
            y = kernels.w8a16_group(x, self.weight, self.weight_scale, self.weight_zp, self.spec.group_size)
        else:
            y = kernels.w8a16_channel(x, self.weight, self.weight_scale)
        if self.has_input_shift and self.quantized:
            y = y + self.shift_bias
        if self.parallel == "row":  # partial sums over this rank's input columns
            y = all_reduce(y, self.tp)
        if self.bias is not None:
            y = y + self.bias
        return y if len(y.shape) == len(lead) + 1 else y.reshape(lead + (self.out_features,))

    @staticmethod
    def _host_rows(x: Tensor, x2: Tensor) -> np.ndarray:
        """``x2`` (``x`` as rows) in host memory; one copy per input tensor however many layers read it
        inside :func:`~golden_ptq.quant_math.input_sharing.sharing`."""
        return shared(x, "host rows", x2.asnumpy)

    def bind_kernel(self) -> None:
        """Fix this layer's product (native operator or MindSpore-op route, :mod:`linear_kernels`)
        as an attribute, for a graph to compile: graphs cannot run the Python that picks it per call.
        Only quantized layers of the forms the native kernels cover are bound."""
        self.bound_kernel = None
        if not self.quantized or self.observing or self.recorder is not None:
            return
        form = self._kernel_form()
        if form is not None:
            self.bound_kernel, self.kernel_extra = kernels.resolve(form, self.in_features, self.spec.group_size)

    def unbind_kernel(self) -> None:
        self.bound_kernel = self.kernel_extra = None

    def _kernel_form(self):
        spec = self.spec
        if spec.act and spec.act_dynamic:
            return "a8w8_dynamic_absmax" if self.shard == "row" else "a8w8_dynamic"
        if spec.act:
            return "a8w8_static"
        if spec.group_size or not spec.weight_symmetric:
            return "w8a16_group"
        return "w8a16_channel"

    def _kernel_args(self, x2: Tensor):
        """The operands after ``x`` of the bound kernel."""
        if self.spec.act and self.spec.act_dynamic:
            if self.shard == "row":
                return self.weight, self.weight_scale, self._whole_row_absmax(x2)
            return self.weight, self.weight_scale
        if self.spec.act:
            return self.weight, self.input_scale, self.input_zp, self.quant_bias, self.deq_scale
        if self.spec.group_size or not self.spec.weight_symmetric:
            return self.weight, self.weight_scale, self.weight_zp, self.kernel_extra
        return self.weight, self.weight_scale

    def _whole_row_absmax(self, x2: Tensor) -> Tensor:
        """Per-token ``max |x|`` over the whole input row, of which this rank holds some columns:
        the same scale as at TP size 1 (a maximum over the ranks, gathered as a SUM of zero-padded
        per-rank slots since CPU AllReduce only sums)."""
        local = kernels.token_absmax(x2)
        slots = [ops.zeros_like(local)] * self.tp.size
        slots[self.tp.rank] = local
        return all_reduce(ops.stack(slots), self.tp).max(axis=0)

    def quantize(self) -> None:
        """Round the (possibly smoothed) float weight and fix activation ranges from the observer."""
        spec = self.spec
        w = self.weight.asnumpy()
        if self.weight_preset is not None:
            q, w_scale, w_zp = self.weight_preset
        elif self.shard == "row" and not spec.group_size:
            q, w_scale, w_zp = self._quantize_row_shard(w)
        else:
            q, w_scale, w_zp = quantize_weight(w, spec.group_size, spec.weight_symmetric, self.weight_bits,
                                               self.weight_clip)
        values = {"weight": q, "weight_scale": w_scale,
                  "weight_zp": np.zeros_like(w_scale) if w_zp is None else w_zp}
        if spec.act and not spec.act_dynamic:
            lo, hi = self.input_observer.tensor_range()   # the whole tensor's, under tensor parallelism
            x_scale, x_zp = static_act_params(lo, hi, spec.act_symmetric, self.act_scale_dtype)
            values.update(input_scale=x_scale, input_zp=x_zp,
                          quant_bias=-x_zp[0].astype(np.int64) * q.astype(np.int64).sum(axis=1),
                          deq_scale=x_scale[0].astype(np.float64) * w_scale)
        if self.input_shift_value is not None:
            if not spec.act:
                raise RuntimeError("QuantLinear: an input shift needs quantized activations (W8A8)")
            shift = np.asarray(self.input_shift_value, np.float64)
            w_deq = (dequantize_weight(q, w_scale, w_zp, spec.group_size) if self.weight_preset is not None else
                     fake_quantize_weight(w, spec.group_size, spec.weight_symmetric, self.weight_bits, self.weight_clip))
            values.update(input_shift=shift, shift_bias=w_deq @ shift)
            self.has_input_shift = True
        for entry in layouts.quantized_entries(self._scheme_key()):   # the table says what is kept, in which dtype
            self._set_param(entry.name, np.asarray(values[entry.name]).astype(entry.dtype))
        self.weight_preset = None
        self.quantized = True
        self.observing = False

    def fake_quantized_weight(self, w: np.ndarray) -> np.ndarray:
        """What this layer would multiply by for the float weight ``w`` (float64, dequantized); a
        row-parallel shard's per-channel scales come from the whole row, as in :meth:`quantize`."""
        spec = self.spec
        if not spec.weight:
            return np.asarray(w, np.float64)
        factored = self.factored_weight(w)
        if factored is not None:
            codes, scale = factored
            return codes * scale[:, None]
        return fake_quantize_weight(w, spec.group_size, spec.weight_symmetric, self.weight_bits, self.weight_clip)

    def factored_weight(self, w: np.ndarray) -> Optional[Tuple[np.ndarray, np.ndarray]]:
        """The dequantized weight of :meth:`fake_quantized_weight` as ``(codes, scale [out])`` (integer-valued
        float64 codes, zero point subtracted) when the weight is quantized per output channel; None
        otherwise (per group, float)."""
        spec = self.spec
        if not spec.weight or spec.group_size:
            return None
        if self.shard == "row":
            q, scale, _ = self._quantize_row_shard(np.asarray(w, np.float32))
            return q.astype(np.float64), scale.astype(np.float64)
        return weight_codes(w, spec.weight_symmetric, self.weight_bits, self.weight_clip)

    def _quantize_row_shard(self, w: np.ndarray):
        """Per-output-channel symmetric int8 of a row-parallel shard: the scale is the full row's absmax."""
        spec = self.spec
        if not spec.weight_symmetric or self.weight_bits != 8 or self.weight_clip is not None:
            raise NotImplementedError(f"QuantLinear: row-parallel ({self.tp.size} ranks) per-channel weights are "
                                      f"supported symmetric 8-bit without clipping; got symmetric="
                                      f"{spec.weight_symmetric}, bits={self.weight_bits}")
        absmax = all_reduce_max(np.abs(w).max(axis=1).astype(np.float32), self.tp)
        scale = symmetric_scale(absmax)
        return quantize(w, scale[:, None]), scale, None

    def deploy_placeholders(self) -> None:
        """Declare the deployed parameters (:mod:`layouts`) without allocating them: the checkpoint's
        tensors replace them one by one, so the int8 weights are the only copy ever held."""
        groups = group_count(self.in_features, self.spec.group_size) if self.spec.group_size else 0
        for entry in layouts.quantized_entries(self._scheme_key()):
            shape = layouts.entry_shape(entry, self.out_features, self.in_features, groups)
            self._declare_param(entry.name, shape, entry.dtype, entry.fill)
        self.quantized = True

    def _scheme_key(self) -> layouts.SchemeKey:
        return layouts.scheme_key(self.spec, self.has_input_shift, self.bias is not None)

    def param_quant_types(self) -> Dict[str, str]:
        label = self.label
        types = {name: label for name, _ in self.parameters_and_names(expand=False)}
        if self.bias is not None:
            types["bias"] = "FLOAT"
        return types
