"""The msModelSlim W8A8 guide's script flow on the default model (SmolLM2-135M), on CPU.

Steps as in the guide: load the model, evaluate the float model, build calibration data as
``[input_ids, attention_mask]`` items, AntiOutlier (``--anti-method``, default m2), rollback list,
QuantConfig + Calibrator (act_method 3, ``--disable-level``), run, save (safetensors + numpy),
evaluate the quantized model, generate a short answer. Small by default (4 windows of 128 tokens).

    python samples/msmodelslim_w8a8.py --output runs/msmodelslim_w8a8
    python samples/msmodelslim_w8a8.py --calib-samples 50 --disable-level L30 --kv-quant --report runs/sens
"""
import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--network-config", default="configs/smollm2_135m.yaml")
    parser.add_argument("--output", default="runs/msmodelslim_w8a8")
    parser.add_argument("--calib-samples", type=int, default=4)
    parser.add_argument("--seq-length", type=int, default=128)
    parser.add_argument("--eval-windows", type=int, default=4)
    parser.add_argument("--anti-method", default="m2")
    parser.add_argument("--act-method", type=int, default=3)
    parser.add_argument("--disable-names", nargs="*", default=[], help="exact layer names kept float")
    parser.add_argument("--disable-level", default="L0")
    parser.add_argument("--kv-quant", action="store_true", help="also int8 KV cache (QuantConfig(...).kv_quant())")
    parser.add_argument("--report", default=None, help="also write the sensitivity report to this folder")
    args = parser.parse_args(argv)

    import numpy as np
    from golden_ptq.algorithm.sensitivity import write_sensitivity_report
    from golden_ptq.eval.corpus import corpus_split, corpus_windows
    from golden_ptq.eval.perplexity import perplexity
    from golden_ptq.msmodelslim import AntiOutlier, AntiOutlierConfig, Calibrator, QuantConfig
    from golden_ptq.networks.helper import NetworkHelper

    # 2. the model and its tokenizer
    helper = NetworkHelper(args.network_config)
    model = helper.create_network()
    tokenizer = helper.create_tokenizer()
    eval_text = corpus_split("evaluation")
    eval_tokens = np.asarray(tokenizer.encode(eval_text))
    seq = args.seq_length
    float_ppl = perplexity(model, eval_tokens, seq, max_windows=args.eval_windows)
    print(f"float perplexity: {float_ppl:.4f}", flush=True)

    # 3. calibration data, in the guide's [input_ids, attention_mask] form
    tokens = corpus_windows(tokenizer, "calibration", seq, args.calib_samples).reshape(-1)
    dataset_calib = [[tokens[None, i * seq:(i + 1) * seq], np.ones((1, seq), np.int64)]
                     for i in range(args.calib_samples)]

    # 4. outlier suppression
    anti_config = AntiOutlierConfig(anti_method=args.anti_method, dev_type="cpu",
                                    a_bit=16 if args.anti_method == "m3" else 8)
    AntiOutlier(model, calib_data=dataset_calib, cfg=anti_config).process()

    # 5-6. rollback list, quantization settings, calibration and saving
    quant_config = QuantConfig(a_bit=16 if args.anti_method == "m3" else 8, w_bit=8, disable_names=args.disable_names,
                               dev_type="cpu", act_method=args.act_method if args.anti_method != "m3" else 1,
                               pr=1.0, w_sym=True, mm_tensor=False)
    if args.kv_quant:
        quant_config = quant_config.kv_quant()
    calibrator = Calibrator(model, quant_config, calib_data=dataset_calib, disable_level=args.disable_level,
                            measure_sensitivity=bool(args.report))
    calibrator.run()
    calibrator.save(args.output, save_type=["safe_tensor", "numpy"])
    print(calibrator.ptq.summary())
    if calibrator.rolled_back:
        print("rolled back by disable_level:", ", ".join(calibrator.rolled_back))
    if args.report:
        print("sensitivity report:", write_sensitivity_report(calibrator.ptq, args.report, png=False))

    quant_ppl = perplexity(model, eval_tokens, seq, max_windows=args.eval_windows)
    print(f"quantized perplexity: {quant_ppl:.4f} ({quant_ppl / float_ppl:.3f}x float); saved to {args.output}")

    # 7. one round of quantized inference
    prompt = "Common sense questions and answers\n\nQuestion: How to learn a new language\nFactual answer:"
    print(helper.generate(model, [prompt], max_new_tokens=24)[0], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
