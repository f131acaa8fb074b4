"""Dataset loaders on small files in the official formats, written into tmp_path."""
import json

import numpy as np
import pytest

from golden_ptq.datasets import DatasetFormatError, fit_prompt, get_datasets


from fakes import TOK, CharTokenizer


def squad_file(tmp_path, data=None):
    if data is None:
        data = [{"title": "T", "paragraphs": [
            {"context": "Paris is the capital of France.",
             "qas": [{"id": "q1", "question": "What is the capital of France?",
                      "answers": [{"text": "Paris", "answer_start": 0},
                                  {"text": "Paris, France", "answer_start": 0}]},
                     {"id": "q2", "question": "Which country?",
                      "answers": [{"text": "France", "answer_start": 24}]}]},
            {"context": "Water boils at 100 degrees.",
             "qas": [{"id": "q3", "question": "When does water boil?",
                      "answers": [{"text": "100 degrees", "answer_start": 15}]}]}]}]
    path = tmp_path / "dev-v1.1.json"
    path.write_text(json.dumps({"version": "1.1", "data": data}), encoding="utf-8")
    return str(path)


BOOLQ_ROWS = [
    {"question": "is the sky blue", "title": "Sky", "passage": "The sky is blue.", "answer": True},
    {"question": "is fire cold", "title": "Fire", "passage": "Fire is hot.", "answer": False},
    {"question": "do fish swim", "title": "Fish", "passage": "Fish swim in water.", "answer": True},
]


def boolq_file(tmp_path, rows=BOOLQ_ROWS, name="dev.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def batches(ds):
    return list(ds.create_dict_iterator(output_numpy=True))


# ----- squad ---------------------------------------------------------------------------------
def test_squad_eval_columns_left_padding_and_labels(tmp_path):
    ds = get_datasets("squad1.1", squad_file(tmp_path), "eval", 2, 128, 8, TOK, -100, 1, False)
    assert ds.get_dataset_size() == 2 and ds.num_samples() == 3
    items = list(ds.create_dict_iterator())
    first = items[0]
    assert {"input_ids", "attention_mask", "labels", "sample_index"} <= set(first)
    import mindspore as ms
    assert isinstance(first["input_ids"], ms.Tensor)
    ids = first["input_ids"].asnumpy()
    mask = first["attention_mask"].asnumpy()
    assert ids.shape == (2, 128) and ids.dtype == np.int32 and mask.dtype == np.int32
    expected = ("Context: Paris is the capital of France.\n"
                "Question: What is the capital of France?\nAnswer:")
    n = len(expected) + 1  # + BOS
    assert list(ids[0, -n:]) == [1] + TOK.encode(expected)
    assert (ids[0, :-n] == 0).all() and (mask[0, :-n] == 0).all() and (mask[0, -n:] == 1).all()
    labels = first["labels"].asnumpy()
    assert labels.shape == (2, 8)
    assert list(labels[0]) == TOK.encode("Paris") + [-100] * 3
    assert TOK.decode([t for t in labels[1] if t != -100]) == "France"
    assert items[1]["input_ids"].shape == (1, 128)  # last batch is partial
    assert ds.references[0] == ["Paris", "Paris, France"]


def test_squad_train_mode_appends_answer_and_no_labels(tmp_path):
    ds = get_datasets("squad1.1", squad_file(tmp_path), "train", 3, 128, 8, TOK, -100, 1, False)
    (batch,) = batches(ds)
    assert "labels" not in batch
    text = TOK.decode([int(t) for t in batch["input_ids"][2] if t >= 3])
    assert text.endswith("Question: When does water boil?\nAnswer: 100 deg")  # " 100 deg": cut to 8


def test_squad_truncates_context_from_the_left(tmp_path):
    ds = get_datasets("squad1.1", squad_file(tmp_path), "eval", 1, 70, 8, TOK, -100, 1, False,
                      n_samples=1)
    row = batches(ds)[0]["input_ids"][0]
    assert row[0] == 1 and (row != 0).all()  # BOS kept, row full
    tail = "\nQuestion: What is the capital of France?\nAnswer:"
    kept = 70 - 1 - len("Context:") - len(tail)
    assert 0 < kept < len(" Paris is the capital of France.")
    assert TOK.decode([int(t) for t in row]) == (
        "Context:" + " Paris is the capital of France."[-kept:] + tail)


def test_fit_prompt_keeps_prefix_and_suffix_then_prompt_end():
    assert fit_prompt([1, 2], [3, 4, 5], [6], 6) == [1, 2, 3, 4, 5, 6]
    assert fit_prompt([1, 2], [3, 4, 5], [6], 4) == [1, 2, 5, 6]
    assert fit_prompt([1, 2], [3, 4, 5], [6, 7], 3) == [2, 6, 7]


def test_squad_missing_field_names_file_record_and_field(tmp_path):
    data = [{"paragraphs": [{"context": "c", "qas": [
        {"id": "a", "question": "q?", "answers": [{"text": "x"}]},
        {"id": "b", "answers": [{"text": "y"}]}]}]}]
    path = squad_file(tmp_path, data)
    with pytest.raises(ValueError) as err:
        get_datasets("squad1.1", path, "eval", 1, 64, 8, TOK, -100, 1, False)
    msg = str(err.value)
    assert path in msg and "data[0].paragraphs[0].qas[1]" in msg and "'question'" in msg


def test_squad_missing_answer_text(tmp_path):
    data = [{"paragraphs": [{"context": "c", "qas": [
        {"question": "q?", "answers": [{"answer_start": 3}]}]}]}]
    with pytest.raises(DatasetFormatError, match=r"qas\[0\]\.answers\[0\]: missing field 'text'"):
        get_datasets("squad1.1", squad_file(tmp_path, data), "eval", 1, 64, 8, TOK, -100, 1, False)


def test_squad_invalid_json_names_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"data": [\n{"paragraphs": \n]}', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.json: line 3"):
        get_datasets("squad1.1", str(path), "eval", 1, 64, 8, TOK, -100, 1, False)


# ----- boolq ---------------------------------------------------------------------------------
def test_boolq_prompt_format_and_answers(tmp_path):
    ds = get_datasets("boolq", boolq_file(tmp_path), "eval", 2, 80, 1, TOK, -100, 1, False)
    first = batches(ds)[0]
    prompt = "Sky -- The sky is blue.\nQuestion:is the sky blue?\nAnswer:"
    n = len(prompt) + 1
    assert list(first["input_ids"][0, -n:]) == [1] + TOK.encode(prompt)
    assert (first["input_ids"][0, :-n] == 0).all()
    assert list(first["answer"]) == [1, 0]
    assert first["answer"].dtype == np.int32


def test_boolq_truncates_passage_not_question(tmp_path):
    rows = [dict(BOOLQ_ROWS[0], passage="word " * 50)]
    ds = get_datasets("boolq", boolq_file(tmp_path, rows), "eval", 1, 70, 1, TOK, -100, 1, False,
                      add_bos=False)
    text = TOK.decode([int(t) for t in batches(ds)[0]["input_ids"][0]])
    assert len(text) == 70 and text.startswith("Sky --word")
    assert text.endswith("word \nQuestion:is the sky blue?\nAnswer:")


@pytest.mark.parametrize("field", ["question", "title", "passage", "answer"])
def test_boolq_missing_field_names_file_line_and_field(tmp_path, field):
    rows = [dict(r) for r in BOOLQ_ROWS]
    del rows[1][field]
    path = boolq_file(tmp_path, rows)
    with pytest.raises(ValueError) as err:
        get_datasets("boolq", path, "eval", 1, 64, 1, TOK, -100, 1, False)
    assert str(err.value) == f"{path}: line 2: missing field '{field}'"


def test_boolq_bad_answer_type_and_bad_json(tmp_path):
    rows = [dict(BOOLQ_ROWS[0], answer="yes")]
    with pytest.raises(ValueError, match="line 1: field 'answer' should be true or false"):
        get_datasets("boolq", boolq_file(tmp_path, rows), "eval", 1, 64, 1, TOK, -100, 1, False)
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(BOOLQ_ROWS[0]) + "\n\n{oops\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"broken\.jsonl: line 3: invalid json"):
        get_datasets("boolq", str(path), "eval", 1, 64, 1, TOK, -100, 1, False)


def test_n_samples_and_seeded_shuffle(tmp_path):
    rows = [dict(BOOLQ_ROWS[0], question=f"question {i}") for i in range(20)]
    path = boolq_file(tmp_path, rows)

    def order(shuffle, seed, n=None, repeat=1):
        ds = get_datasets("boolq", path, "eval", 4, 64, 1, TOK, -100, repeat, shuffle, n, seed)
        return [TOK.decode([int(t) for t in row if t >= 3]).split("Question:question ")[1]
                .split("?")[0] for b in batches(ds) for row in b["input_ids"]]

    assert order(False, 0, n=5) == ["0", "1", "2", "3", "4"]
    assert order(True, 7) == order(True, 7)
    assert order(True, 7) != order(True, 8)
    assert sorted(order(True, 7), key=int) == [str(i) for i in range(20)]
    assert len(order(True, 3, n=6)) == 6 and order(True, 3, n=6) != order(False, 0, n=6)
    twice = order(True, 5, repeat=2)
    assert len(twice) == 40 and twice[:20] != twice[20:]


# ----- text / jsonl --------------------------------------------------------------------------
def test_text_windows_drop_partial_tail(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text("abcdefghij" * 3 + "xyz", encoding="utf-8")  # 33 chars + BOS = 34 tokens
    ds = get_datasets("text", str(path), "train", 2, 10, 0, TOK, -100, 1, False)
    assert ds.num_samples() == 3 and ds.get_dataset_size() == 2
    rows = [row for b in batches(ds) for row in b["input_ids"]]
    assert list(rows[0]) == [1] + TOK.encode("abcdefghi")
    assert TOK.decode([int(t) for t in rows[2]]) == "jabcdefghi"
    assert (batches(ds)[0]["attention_mask"] == 1).all()
    assert np.array_equal(batches(ds)[0]["labels"], batches(ds)[0]["input_ids"])


def test_text_shorter_than_window_is_left_padded(tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("hi", encoding="utf-8")
    (b,) = batches(get_datasets("text", str(path), "eval", 1, 6, 0, TOK, -100, 1, False))
    assert list(b["input_ids"][0]) == [0, 0, 0, 1] + TOK.encode("hi")
    assert list(b["attention_mask"][0]) == [0, 0, 0, 1, 1, 1]
    assert list(b["labels"][0]) == [-100, -100, -100, 1] + TOK.encode("hi")


def test_jsonl_field_documents_joined_with_eos(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"body": "abc"}\n{"body": "de"}\n', encoding="utf-8")
    ds = get_datasets("jsonl", str(path), "train", 1, 3, 0, TOK, -100, 1, False, field="body")
    stream = [int(t) for b in batches(ds) for t in b["input_ids"][0]]
    assert stream == [1] + TOK.encode("abc") + [2, 1]  # 8 tokens: the tail "de" is dropped
    with pytest.raises(ValueError, match=r"docs\.jsonl: line 1: missing field 'text'"):
        get_datasets("jsonl", str(path), "train", 1, 3, 0, TOK, -100, 1, False)


def test_text_n_samples_limits_windows(tmp_path):
    path = tmp_path / "long.txt"
    path.write_text("0123456789\n" * 100, encoding="utf-8")
    ds = get_datasets("text", str(path), "train", 2, 8, 0, TOK, -100, 1, False, n_samples=3)
    assert ds.num_samples() == 3 and ds.get_dataset_size() == 2


# ----- errors and iteration ------------------------------------------------------------------
def test_unknown_name_and_mode_list_the_allowed_ones(tmp_path):
    path = boolq_file(tmp_path)
    with pytest.raises(ValueError, match="squad1.1, boolq, text, jsonl"):
        get_datasets("wikitext", path, "eval", 1, 8, 1, TOK, -100, 1, False)
    with pytest.raises(ValueError, match="train, eval"):
        get_datasets("boolq", path, "test", 1, 8, 1, TOK, -100, 1, False)


def test_plain_iteration_yields_tensors_and_repeat_counts(tmp_path):
    import mindspore as ms
    ds = get_datasets("boolq", boolq_file(tmp_path), "train", 2, 64, 1, TOK, -100, 3, False)
    items = list(ds)
    assert len(items) == ds.get_dataset_size() == 6
    assert all(isinstance(v, ms.Tensor) for item in items for v in item.values())
    assert items[0]["input_ids"].dtype == ms.int32


def test_bos_follows_tokenizer_add_bos_token_unless_forced(tmp_path):
    class NoBosTokenizer(CharTokenizer):
        add_bos_token = False

    path = boolq_file(tmp_path)
    first = lambda tok, **kw: batches(get_datasets(  # noqa: E731
        "boolq", path, "eval", 1, 80, 1, tok, -100, 1, False, n_samples=1, **kw))[0]["input_ids"][0]
    assert 1 in first(TOK) and 1 not in first(NoBosTokenizer())
    assert 1 in first(NoBosTokenizer(), add_bos=True) and 1 not in first(TOK, add_bos=False)
