"""``PTQConfig``: what to quantize and how, validated on construction, with a yaml round-trip."""
from __future__ import annotations

import dataclasses
import os
import re
import tempfile
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, List, Optional

import mindspore as ms
import yaml

from golden_ptq.config.enums import BackendTarget, OutliersSuppressionType, PrecisionRecovery, PTQMode, QuantGranularity
from golden_ptq.config.method_names import (NO_ROTATION, W8A8, WEIGHT_ONLY, check_scheme, normalize_anti_method,
                                            normalize_rotation)
from golden_ptq.config.validation import (ConfigError, check_bool, check_float, check_int, check_known_keys,
                                          check_mapping, check_str, check_str_list, did_you_mean,
                                          load_yaml_mapping)

_DTYPES = {"int8": ms.int8}
# known algo_args keys and their defaults; which method reads which is declared by the method
# (golden_ptq.algorithm.methods); search_rows and hist_bins serve several
ALGO_ARGS = {
    "smooth_alpha": 0.5, "alpha_grid": 11, "beta_grid": 6, "awq_grid": 20, "awq_clip_grid": 10,
    "search_rows": 512,       # calibration rows kept per Linear input for the searches and the sensitivity report
    "hist_bins": 2048,        # act_method 2/3: histogram bins
    "gptq_damp_percent": 0.01, "gptq_block_size": 128, "gptq_act_order": False,
    "static_scale_dtype": "float32",  # "float16": static input scales rounded up to fp16 values (MindIE stores fp16)
    "rotation_seed": 0,       # rotation: seed of the random signs of the residual-stream Hadamard
    "rotation_online": True,  # rotation: also an online block Hadamard before feed_forward.w2
    "rotation_online_smooth": False,  # rotation_online: still smooth w3 -> w2, on the channels before it
    "kvcache_scheme": "static",  # int8 KV cache layout, one of KVCACHE_SCHEMES (golden_ptq.quant_cells.kvcache)
    "calibration_inputs": "quantized",  # what each layer is calibrated on, one of CALIBRATION_INPUTS
}
#: ``quantized``: each decoder layer sees the outputs of the layers before it *as quantized* (a float
#: pass to observe it, then a quantized pass to feed the next layer); ``float``: the float network's
#: activations (one pass per layer, as msModelSlim's Calibrator observes a float model)
CALIBRATION_INPUTS = ("quantized", "float")
#: ``static``: symmetric per-channel keys and values (msModelSlim's C8); ``token_values``: asymmetric
#: per-channel keys, values with one scale per token and head
KVCACHE_SCHEMES = ("static", "token_values")
# allowed [min, max] of the integer / float algo_args; _BOOL_ARGS are bools
ALGO_ARG_RANGES = {"alpha_grid": (2, 1000), "beta_grid": (2, 1000), "awq_grid": (2, 1000),
                   "awq_clip_grid": (2, 1000), "search_rows": (2, 10_000_000), "hist_bins": (16, 1 << 20),
                   "gptq_block_size": (1, 1 << 16), "rotation_seed": (0, (1 << 32) - 1), "smooth_alpha": (0.0, 1.0),
                   "gptq_damp_percent": (1e-6, 1.0)}
_FLOAT_ARGS = ("smooth_alpha", "gptq_damp_percent")
_BOOL_ARGS = ("gptq_act_order", "rotation_online", "rotation_online_smooth")
_CHOICE_ARGS = {"static_scale_dtype": ("float32", "float16"), "kvcache_scheme": KVCACHE_SCHEMES,
                "calibration_inputs": CALIBRATION_INPUTS}
ROLLBACK_SIGNALS = ("range_parm", "output_error")
_LEVEL = re.compile(r"^L(\d+)$")


def _dtype_name(value) -> Optional[str]:
    if value is None:
        return None
    for name, dtype in _DTYPES.items():
        if value == dtype:
            return name
    return str(value)


@dataclass
class PTQConfig:
    """Settings of :class:`golden_ptq.PTQ`.

    ``weight_quant_dtype``/``act_quant_dtype``/``kvcache_quant_dtype``/``embedding_quant_dtype`` are
    ``mindspore.int8`` (or ``"int8"``) or None. ``opname_blacklist`` entries are substrings of layer
    names (``"w2"`` keeps every ``feed_forward.w2`` float); ``weight_only_names`` entries, matched the
    same way, keep their layers' activations float in an A8W8 config (int8 weights, W8A16: a
    ``lm_head`` read once per token at a quarter of its float bytes, with float logits' accuracy).
    ``act_symmetric=None`` picks the
    natural default: asymmetric for static per-tensor, symmetric for dynamic per-token.
    ``rotation``: ``"none"`` or ``"hadamard"`` (an orthogonal rotation folded into the float network
    before calibration, seeded by ``algo_args['rotation_seed']``; see
    :mod:`golden_ptq.algorithm.modules.rotation`).
    """

    mode: PTQMode = PTQMode.QUANTIZE
    backend: BackendTarget = BackendTarget.CPU
    opname_blacklist: List[str] = field(default_factory=list)
    weight_quant_dtype: Any = ms.int8
    act_quant_dtype: Any = None
    kvcache_quant_dtype: Any = None
    embedding_quant_dtype: Any = None
    outliers_suppression: OutliersSuppressionType = OutliersSuppressionType.NONE
    algo_args: Dict[str, Any] = field(default_factory=dict)
    weight_quant_granularity: QuantGranularity = QuantGranularity.PER_CHANNEL
    group_size: int = 0
    act_quant_granularity: QuantGranularity = QuantGranularity.PER_TENSOR
    weight_symmetric: bool = True
    act_symmetric: Optional[bool] = None
    weight_bits: int = 8
    anti_method: Optional[str] = None
    act_method: int = 1
    disable_names: List[str] = field(default_factory=list)
    disable_level: str = "L0"
    rollback_signal: str = "range_parm"
    precision_recovery: PrecisionRecovery = PrecisionRecovery.NONE
    rotation: str = NO_ROTATION
    weight_only_names: List[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.validate()

    # ----- validation ---------------------------------------------------------------------------
    def _coerce(self) -> None:
        """Typed parsing of every field: enums and dtypes from their names, no truthy strings."""
        for name, enum in (("mode", PTQMode), ("backend", BackendTarget),
                           ("outliers_suppression", OutliersSuppressionType),
                           ("precision_recovery", PrecisionRecovery),
                           ("weight_quant_granularity", QuantGranularity),
                           ("act_quant_granularity", QuantGranularity)):
            value = getattr(self, name)
            if isinstance(value, str):
                key = value.upper()
                if key not in enum.__members__:
                    raise ConfigError(f"PTQConfig.{name}: {value!r} is not one of {list(enum.__members__)}"
                                       f"{did_you_mean(key, enum.__members__)}")
                setattr(self, name, enum[key])
            elif not isinstance(value, enum):
                raise ConfigError(f"PTQConfig.{name} must be a {enum.__name__} (or one of "
                                   f"{list(enum.__members__)}), got {value!r}")
        for name in ("weight_quant_dtype", "act_quant_dtype", "kvcache_quant_dtype", "embedding_quant_dtype"):
            value = getattr(self, name)
            if isinstance(value, str):
                if value not in _DTYPES:
                    raise ConfigError(f"PTQConfig.{name}: {value!r} is not supported; allowed: "
                                       f"{list(_DTYPES)} or None")
                setattr(self, name, _DTYPES[value])
            elif value is not None and _dtype_name(value) not in _DTYPES:
                raise ConfigError(f"PTQConfig.{name}: {value!r} is not supported; allowed: mindspore.int8, "
                                   f"'int8' or None")
        self.opname_blacklist = check_str_list(self.opname_blacklist, "PTQConfig.opname_blacklist")
        self.disable_names = check_str_list(self.disable_names, "PTQConfig.disable_names")
        self.weight_only_names = check_str_list(self.weight_only_names, "PTQConfig.weight_only_names")
        self.algo_args = check_mapping(self.algo_args, "PTQConfig.algo_args")
        check_known_keys(self.algo_args, ALGO_ARGS, "PTQConfig.algo_args")
        for key, value in self.algo_args.items():
            where = f"PTQConfig.algo_args[{key!r}]"
            if key in _FLOAT_ARGS:
                self.algo_args[key] = check_float(value, where, *ALGO_ARG_RANGES[key])
            elif key in _BOOL_ARGS:
                self.algo_args[key] = check_bool(value, where)
            elif key in _CHOICE_ARGS:
                self.algo_args[key] = check_str(value, where, _CHOICE_ARGS[key])
            else:
                self.algo_args[key] = check_int(value, where, *ALGO_ARG_RANGES[key])
        self.weight_symmetric = check_bool(self.weight_symmetric, "PTQConfig.weight_symmetric")
        self.act_symmetric = check_bool(self.act_symmetric, "PTQConfig.act_symmetric", optional=True)
        self.group_size = check_int(self.group_size, "PTQConfig.group_size", 0)
        self.weight_bits = check_int(self.weight_bits, "PTQConfig.weight_bits")
        self.act_method = check_int(self.act_method, "PTQConfig.act_method")
        self.disable_level = check_str(self.disable_level, "PTQConfig.disable_level")
        self.rollback_signal = check_str(self.rollback_signal, "PTQConfig.rollback_signal", ROLLBACK_SIGNALS)
        if self.anti_method is not None and not isinstance(self.anti_method, str):
            raise ConfigError(f"PTQConfig.anti_method: {self.anti_method!r} ({type(self.anti_method).__name__}) "
                               f"is not a method name; allowed: a code 'm1'..'m6', a method name, or null")
        self.anti_method = normalize_anti_method(self.anti_method)
        self.rotation = normalize_rotation(self.rotation)

    def validate(self) -> None:
        """Type-check (again: fields may have been assigned since) and check the combination."""
        self._coerce()
        if self.backend is not BackendTarget.CPU:
            raise ConfigError(f"PTQConfig.backend: {self.backend} is not available in golden_ptq; use "
                              f"BackendTarget.CPU (the quantized network runs wherever MindSpore runs)")
        if self.act_quant_dtype is not None and self.weight_quant_dtype is None:
            raise ConfigError("PTQConfig: act_quant_dtype=int8 needs weight_quant_dtype=int8 (A8W16 is not a "
                              "supported scheme); set both, or act_quant_dtype=None for weight-only")
        if self.weight_only_names and self.act_quant_dtype is None:
            raise ConfigError(f"PTQConfig.weight_only_names {self.weight_only_names}: every quantized layer is "
                              f"already weight-only (act_quant_dtype=None); leave it empty")
        if self.outliers_suppression is OutliersSuppressionType.SMOOTH and self.act_quant_dtype is None:
            raise ConfigError("PTQConfig: outliers_suppression=SMOOTH migrates activation outliers and needs "
                              "act_quant_dtype=int8; use OutliersSuppressionType.NONE for weight-only")
        allowed_w = (QuantGranularity.PER_CHANNEL, QuantGranularity.PER_GROUP)
        if self.weight_quant_granularity not in allowed_w:
            raise ConfigError(f"PTQConfig.weight_quant_granularity: {self.weight_quant_granularity} not allowed; "
                              f"allowed: {[g.name for g in allowed_w]}")
        if self.weight_quant_granularity is QuantGranularity.PER_GROUP:
            if self.group_size <= 0:
                raise ConfigError(f"PTQConfig.group_size must be a positive integer with PER_GROUP, "
                                  f"got {self.group_size!r}")
            if self.act_quant_dtype is not None:
                raise ConfigError("PTQConfig: PER_GROUP weights are for weight-only quantization; "
                                  "set act_quant_dtype=None or weight_quant_granularity=PER_CHANNEL")
        elif self.group_size:
            raise ConfigError(f"PTQConfig.group_size={self.group_size} needs weight_quant_granularity=PER_GROUP")
        allowed_a = (QuantGranularity.PER_TENSOR, QuantGranularity.PER_TOKEN)
        if self.act_quant_granularity not in allowed_a:
            raise ConfigError(f"PTQConfig.act_quant_granularity: {self.act_quant_granularity} not allowed; "
                              f"allowed: {[g.name for g in allowed_a]}")
        if self.act_quant_granularity is QuantGranularity.PER_TOKEN and self.act_symmetric is False:
            raise ConfigError("PTQConfig: dynamic PER_TOKEN activations are symmetric; set act_symmetric=None/True")
        if not self.weight_symmetric and self.act_quant_dtype is not None:
            raise ConfigError("PTQConfig: asymmetric weights (weight_symmetric=False) are supported for "
                              "weight-only quantization; A8W8 uses symmetric weights")
        self._validate_tuning()
        if (self.mode is PTQMode.QUANTIZE and self.weight_quant_dtype is None and self.kvcache_quant_dtype is None
                and self.embedding_quant_dtype is None):
            raise ConfigError("PTQConfig: nothing to quantize; set weight_quant_dtype, kvcache_quant_dtype or "
                              "embedding_quant_dtype to int8")

    def _validate_tuning(self) -> None:
        """The msModelSlim-style knobs: weight_bits, anti_method, act_method, rollback."""
        if self.weight_bits not in (4, 8):
            raise ConfigError(f"PTQConfig.weight_bits: {self.weight_bits!r} is not supported; allowed: [4, 8]")
        if self.weight_bits == 4 and self.act_quant_dtype is not None:
            raise ConfigError("PTQConfig: weight_bits=4 is weight-only (W4A16); set act_quant_dtype=None")
        if self.weight_bits == 4 and self.weight_quant_dtype is None:
            raise ConfigError("PTQConfig: weight_bits=4 needs weight_quant_dtype=int8 (the 4-bit codes' container)")
        method = self.anti_method
        if method is not None and self.outliers_suppression is OutliersSuppressionType.SMOOTH and method != "m1":
            raise ConfigError(f"PTQConfig: outliers_suppression=SMOOTH is anti_method 'm1' but anti_method="
                              f"{method!r}; set outliers_suppression=NONE and let anti_method choose")
        for owner, code in (("PTQConfig.anti_method", method), ("PTQConfig.precision_recovery",
                                                                 self.precision_recovery_method)):
            if code is None:
                continue
            if self.weight_quant_dtype is None:
                raise ConfigError(f"{owner} {code!r} works on quantized weights; set weight_quant_dtype=int8")
            check_scheme(code, W8A8 if self.act_quant_dtype is not None else WEIGHT_ONLY, owner)
        if self.arg("rotation_online_smooth") and not self.arg("rotation_online"):
            raise ConfigError("PTQConfig.algo_args['rotation_online_smooth']: true smooths w3 -> w2 through the "
                              "online Hadamard and needs algo_args['rotation_online']: true")
        if self.act_method not in (1, 2, 3):
            raise ConfigError(f"PTQConfig.act_method: {self.act_method!r} not allowed; allowed: 1 (min-max), "
                              f"2 (histogram), 3 (hybrid)")
        if self.act_method != 1 and (self.act_quant_dtype is None
                                     or self.act_quant_granularity is not QuantGranularity.PER_TENSOR):
            raise ConfigError(f"PTQConfig.act_method={self.act_method} chooses the static activation range; it "
                              f"needs act_quant_dtype=int8 with act_quant_granularity=PER_TENSOR")
        if not _LEVEL.match(self.disable_level):
            raise ConfigError(f"PTQConfig.disable_level: {self.disable_level!r} is not 'L<n>' ('L0': no automatic "
                              f"rollback, 'L5': roll back the 5 most sensitive Linear layers)")
        if self.rollback_level and self.mode is PTQMode.DEPLOY:
            raise ConfigError(f"PTQConfig.disable_level={self.disable_level!r} needs calibration data (QUANTIZE); "
                              f"a DEPLOY config lists the rolled-back layers in disable_names")
        if self.rollback_signal not in ROLLBACK_SIGNALS:
            raise ConfigError(f"PTQConfig.rollback_signal: {self.rollback_signal!r} not allowed; allowed: "
                              f"{list(ROLLBACK_SIGNALS)}")

    # ----- derived --------------------------------------------------------------------------------
    @property
    def activation_symmetric(self) -> bool:
        if self.act_symmetric is None:
            return self.act_quant_granularity is QuantGranularity.PER_TOKEN
        return bool(self.act_symmetric)

    @property
    def rollback_level(self) -> int:
        """x of ``disable_level='Lx'``."""
        match = _LEVEL.match(self.disable_level)
        return int(match.group(1)) if match else 0

    @property
    def effective_anti_method(self) -> Optional[str]:
        """The outlier-suppression method in force: ``anti_method``, or 'm1' for ``outliers_suppression=SMOOTH``."""
        if self.anti_method is not None:
            return self.anti_method
        return "m1" if self.outliers_suppression is OutliersSuppressionType.SMOOTH else None

    @property
    def precision_recovery_method(self) -> Optional[str]:
        """The method name of ``precision_recovery`` (``"gptq"``), None for round-to-nearest."""
        return None if self.precision_recovery is PrecisionRecovery.NONE else self.precision_recovery.value

    @property
    def rotation_method(self) -> Optional[str]:
        """The rotation method's name (``"hadamard"``), None without rotation."""
        return None if self.rotation == NO_ROTATION else self.rotation

    def arg(self, name: str) -> Any:
        return self.algo_args.get(name, ALGO_ARGS[name])

    def with_algo_args(self, **values: Any) -> "PTQConfig":
        """A validated copy whose ``algo_args`` have ``values`` set (this config is not changed)."""
        return type(self).from_dict({**self.to_dict(), "algo_args": {**self.algo_args, **values}})

    # ----- yaml -------------------------------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        """Plain values (enum names, dtype names); the config itself is not changed."""
        out: Dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Enum):
                value = value.name
            elif f.name.endswith("_dtype"):
                value = _dtype_name(value)
            elif isinstance(value, (list, dict)):
                value = type(value)(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "PTQConfig":
        known = [f.name for f in dataclasses.fields(cls)]
        check_known_keys(values, known, "PTQConfig", "field")
        return cls(**values)

    def dump(self, path: str) -> None:
        """Write yaml atomically (a reader never sees half a file)."""
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        folder = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".ptq_config.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    @classmethod
    def load(cls, path: str) -> "PTQConfig":
        """Read a yaml written by :meth:`dump` (or by hand); every error names ``path``."""
        data = load_yaml_mapping(path, "a PTQConfig")
        try:
            return cls.from_dict(data)
        except ValueError as err:
            raise type(err)(f"{path}: {err}") from None
