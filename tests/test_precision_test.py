"""BoolQ log-likelihood scoring, the SQuAD generation loop and PrecisionTest, on fake
networks whose outputs are known and on the tiny random Llama."""
import json
import sys
import types

import mindspore as ms
import numpy as np
import pytest

from golden_ptq.datasets import get_datasets
from golden_ptq.eval.boolq import continuation_logprobs, evaluate_boolq
from golden_ptq.eval.precision_test import PrecisionTest, evaluate_squad, first_line


from fakes import TOK
ANSWER = TOK.encode("Answer:")

BOOLQ = [  # the fake model believes "yes" iff the prompt says "blue" or "swim"
    {"question": "is the sky blue", "title": "Sky", "passage": "The sky is blue.", "answer": True},
    {"question": "is fire cold", "title": "Fire", "passage": "Fire is hot, very hot.",
     "answer": False},
    {"question": "do fish swim", "title": "Fish", "passage": "Fish swim.", "answer": True},
    {"question": "is grass red", "title": "Grass", "passage": "Grass is green.", "answer": True},
]


def write_boolq(tmp_path):
    path = tmp_path / "dev.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in BOOLQ), encoding="utf-8")
    return str(path)


def end_of_prompt(row):
    """Column just after the last "Answer:" in ``row``."""
    for start in range(len(row) - len(ANSWER), -1, -1):
        if list(row[start:start + len(ANSWER)]) == ANSWER:
            return start + len(ANSWER)
    raise AssertionError("no 'Answer:' in row")


class BeliefNet:
    """Puts +20 on exactly the next token of " yes" or " no" (its belief) after "Answer:".

    An off-by-one in the scorer reads the wrong position and gets the answer wrong.
    """

    def __init__(self):
        self.shapes = []

    @staticmethod
    def belief(row):
        text = TOK.decode([int(t) for t in row[:end_of_prompt(row)]])
        return " yes" if ("blue" in text or "swim" in text) else " no"

    def __call__(self, input_ids, attention_mask):
        ids, mask = input_ids.asnumpy(), attention_mask.asnumpy()
        self.shapes.append(ids.shape)
        logits = np.zeros(ids.shape + (TOK.vocab_size,), dtype=np.float32)
        for r, row in enumerate(ids):
            assert mask[r, end_of_prompt(row) - 1] == 1
            for k, tok in enumerate(TOK.encode(self.belief(row))):
                logits[r, end_of_prompt(row) - 1 + k, tok] += 20.0
        return ms.Tensor(logits)

    def generate(self, input_ids, max_new_tokens=None, attention_mask=None, **kwargs):
        return [np.concatenate([row, TOK.encode(self.belief(row).strip() + ".")[:max_new_tokens]])
                for row in np.asarray(input_ids)]


def test_boolq_loglikelihood_accuracy_with_known_beliefs(tmp_path):
    net = BeliefNet()
    ds = get_datasets("boolq", write_boolq(tmp_path), "eval", 3, 96, 1, TOK, -100, 1, False)
    result = evaluate_boolq(net, TOK, ds, bucket=1)
    assert result == {"accuracy": 0.75, "count": 4}  # the grass row is labelled against belief
    # one forward per batch, both candidates stacked; all-padding columns trimmed
    longest = 1 + len("Fire -- Fire is hot, very hot.\nQuestion:is fire cold?\nAnswer:")
    assert net.shapes == [(6, longest + 4), (2, 1 + len(
        "Grass -- Grass is green.\nQuestion:is grass red?\nAnswer:") + 4)]
    # default: the kept width is rounded up to a multiple of 64 (few shapes to compile)
    net.shapes.clear()
    assert evaluate_boolq(net, TOK, ds)["accuracy"] == 0.75
    assert net.shapes == [(6, 64 + 4), (2, 64 + 4)]


def test_precision_test_boolq_with_generation(tmp_path, capsys):
    result = PrecisionTest(BeliefNet(), TOK, "boolq", 2, dataset_path=write_boolq(tmp_path),
                           seq_length=96, with_generation=True).test()
    assert result["accuracy"] == 0.75 and result["generation_accuracy"] == 0.75
    assert "[PrecisionTest] boolq" in capsys.readouterr().out
    only_two = PrecisionTest(BeliefNet(), TOK, "boolq", 2, dataset_path=write_boolq(tmp_path),
                             n_samples=2, seq_length=96, verbose=False).test()
    assert only_two["count"] == 2 and only_two["accuracy"] == 1.0


def test_continuation_logprobs_values():
    """Uniform logits: every token has log-prob -log(V), so a k-token continuation scores -k log V."""
    class Uniform:
        def __call__(self, ids, mask):
            return ms.Tensor(np.zeros(ids.shape + (10,), dtype=np.float32))
    ids = np.array([[0, 0, 5], [4, 5, 6]], dtype=np.int32)
    mask = (ids != 0).astype(np.int32)
    scores = continuation_logprobs(Uniform(), ids, mask, [[1, 2, 3], [4]], pad_token_id=0)
    assert scores.shape == (2, 2)
    np.testing.assert_allclose(scores, [[-3 * np.log(10), -np.log(10)]] * 2)


# ----- squad ---------------------------------------------------------------------------------
SQUAD = {"version": "1.1", "data": [{"title": "t", "paragraphs": [
    {"context": "Paris is the capital of France.",
     "qas": [{"id": "1", "question": "Capital of France?",
              "answers": [{"text": "Paris"}, {"text": "Paris, France"}]},
             {"id": "2", "question": "Which country?", "answers": [{"text": "France"}]}]},
    {"context": "Water boils at 100 degrees.",
     "qas": [{"id": "3", "question": "When does water boil?",
              "answers": [{"text": "100 degrees"}]}]}]}]}
REPLIES = {"Capital of France?": " Paris, France\nQuestion: more",
           "Which country?": " the country France",
           "When does water boil?": " 100 degrees"}


class AnswerNet:
    """``generate`` replies from REPLIES by question, then eos; records its keyword arguments."""

    def __init__(self):
        self.calls = []

    def generate(self, input_ids, **kwargs):
        self.calls.append(kwargs)
        out = []
        for row in np.asarray(input_ids):
            text = TOK.decode([int(t) for t in row])
            question = text.split("Question: ")[-1].split("\nAnswer:")[0]
            out.append(np.concatenate([row, TOK.encode(REPLIES[question]) + [2]]))
        return out


def write_squad(tmp_path):
    path = tmp_path / "dev-v1.1.json"
    path.write_text(json.dumps(SQUAD), encoding="utf-8")
    return str(path)


def test_squad_eval_loop_em_f1_with_all_golds(tmp_path):
    net = AnswerNet()
    ds = get_datasets("squad1.1", write_squad(tmp_path), "eval", 2, 128, 16, TOK, -100, 1, False)
    result = evaluate_squad(net, TOK, ds, max_new_tokens=20)
    # "Paris, France" matches the 2nd gold; "the country France" -> F1 2/3; exact third
    assert result["count"] == 3
    assert result["em"] == pytest.approx(200 / 3)
    assert result["f1"] == pytest.approx(100 * (1 + 2 / 3 + 1) / 3)
    assert net.calls[0]["max_new_tokens"] == 20 and net.calls[0]["do_sample"] is False
    assert net.calls[0]["pad_token_id"] == 0 and net.calls[0]["attention_mask"].shape == (2, 128)


def test_squad_eval_falls_back_to_decoded_labels(tmp_path):
    ds = get_datasets("squad1.1", write_squad(tmp_path), "eval", 3, 128, 16, TOK, -100, 1, False)
    ds.references = None  # only the first gold answer, from the labels column
    result = evaluate_squad(AnswerNet(), TOK, ds)
    # "Paris, France" vs "Paris": EM 0, F1 2/3
    assert result["em"] == pytest.approx(100 / 3)
    assert result["f1"] == pytest.approx(100 * (2 / 3 + 2 / 3 + 1) / 3)


def test_first_line():
    assert first_line("  Paris\nQuestion: x") == "Paris"
    assert first_line("\n\n") == ""


def test_precision_test_squad(tmp_path):
    result = PrecisionTest(AnswerNet(), TOK, "squad1.1", 2, dataset_path=write_squad(tmp_path),
                           n_samples=1, seq_length=128, verbose=False).test()
    assert result["em"] == 100.0 and result["count"] == 1


# ----- text / errors -------------------------------------------------------------------------
def test_precision_test_text_calls_perplexity(tmp_path, monkeypatch):
    seen = {}

    def fake_perplexity(network, token_ids, seq_length, stride=None, batch_size=1):
        seen.update(ids=np.asarray(token_ids), seq_length=seq_length, stride=stride,
                    batch_size=batch_size)
        return 12.5

    module = types.ModuleType("golden_ptq.eval.perplexity")
    module.perplexity = fake_perplexity
    monkeypatch.setitem(sys.modules, "golden_ptq.eval.perplexity", module)
    path = tmp_path / "book.txt"
    path.write_text("abcdefghij", encoding="utf-8")
    result = PrecisionTest(object(), TOK, "text", 4, dataset_path=str(path), seq_length=8,
                           stride=4, text_fraction=(0.8, 1.0), verbose=False).test()
    assert result["perplexity"] == 12.5 and result["tokens"] == 3
    assert list(seen["ids"]) == [1] + TOK.encode("ij")  # BOS + the last fifth
    assert (seen["seq_length"], seen["stride"], seen["batch_size"]) == (8, 4, 4)


def test_precision_test_rejects_unknown_task_and_missing_path(tmp_path):
    with pytest.raises(ValueError, match="boolq, squad1.1, text"):
        PrecisionTest(BeliefNet(), TOK, "mmlu", 1, dataset_path="x")
    with pytest.raises(ValueError, match="dataset_path is required"):
        PrecisionTest(BeliefNet(), TOK, "boolq", 1)


# ----- the tiny random Llama -----------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_net():
    from golden_ptq.networks import llama
    config = llama.LlamaConfig(vocab_size=TOK.vocab_size, hidden_size=64, num_layers=2,
                               num_heads=4, num_kv_heads=2, intermediate_size=128)
    net = llama.LlamaForCausalLM(config, seed=0)
    net.set_train(False)
    return net


def test_boolq_scores_on_real_network_match_unpadded_forward(tmp_path, tiny_net):
    ds = get_datasets("boolq", write_boolq(tmp_path), "eval", 4, 96, 1, TOK, -100, 1, False)
    (batch,) = list(ds.create_dict_iterator(output_numpy=True))
    conts = [TOK.encode(" yes"), TOK.encode(" no")]
    batched = continuation_logprobs(tiny_net, batch["input_ids"], batch["attention_mask"],
                                    conts, 0)
    for r in range(4):  # each row alone, no padding, log-probs summed by hand
        prompt = [int(t) for t, m in zip(batch["input_ids"][r], batch["attention_mask"][r]) if m]
        for c, cont in enumerate(conts):
            ids = np.asarray([prompt + cont], dtype=np.int32)
            logits = tiny_net(ms.Tensor(ids), None).asnumpy()[0].astype(np.float64)
            logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1,
                                   keepdims=True)) - logits.max(-1, keepdims=True)
            expected = sum(logp[len(prompt) - 1 + k, tok] for k, tok in enumerate(cont))
            assert batched[r, c] == pytest.approx(expected, abs=1e-3)


def test_squad_precision_test_runs_on_real_network(tmp_path, tiny_net):
    result = PrecisionTest(tiny_net, TOK, "squad1.1", 2, dataset_path=write_squad(tmp_path),
                           seq_length=96, max_new_tokens=4, verbose=False).test()
    assert result["count"] == 3 and 0.0 <= result["em"] <= result["f1"] <= 100.0


# ----- samples -------------------------------------------------------------------------------
def load_sample(name):
    import importlib.util
    import pathlib
    path = pathlib.Path(__file__).resolve().parents[1] / "samples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"sample_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_helper_module(network):
    """A stand-in NetworkHelper class that hands out ``network`` and the test tokenizer."""
    class Helper:
        def __init__(self, path):
            assert path == "net.yaml"

        def create_network(self):
            return network

        def create_tokenizer(self):
            return TOK

    return Helper


def test_eval_boolq_sample_cli(tmp_path, monkeypatch):
    monkeypatch.setattr("golden_ptq.networks.helper.NetworkHelper", fake_helper_module(BeliefNet()))
    out = tmp_path / "result.json"
    result = load_sample("eval_boolq").main([
        "--network-config", "net.yaml", "--dataset-path", write_boolq(tmp_path),
        "--batch-size", "2", "--seq-length", "96", "--output", str(out)])
    assert result["accuracy"] == 0.75
    assert json.loads(out.read_text())["count"] == 4


def test_eval_squad_sample_cli(tmp_path, monkeypatch):
    monkeypatch.setattr("golden_ptq.networks.helper.NetworkHelper", fake_helper_module(AnswerNet()))
    result = load_sample("eval_squad").main([
        "--network-config", "net.yaml", "--dataset-path", write_squad(tmp_path),
        "--n-samples", "2", "--seq-length", "128"])
    assert result["count"] == 2 and result["em"] == 50.0


def test_sample_quant_args_go_together(tmp_path, monkeypatch):
    monkeypatch.setattr("golden_ptq.networks.helper.NetworkHelper", fake_helper_module(BeliefNet()))
    with pytest.raises(ValueError, match="quant-config"):
        load_sample("eval_ppl").main(["--network-config", "net.yaml", "--dataset-path", "x.txt",
                                      "--quant-ckpt", "a.ckpt"])
