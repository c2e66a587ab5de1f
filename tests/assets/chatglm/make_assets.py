"""Regenerate the tiny tokenizer folders used by tests/test_chatglm_*.py (run from the repo root):

    .venv/bin/python tests/assets/chatglm/make_assets.py

Provenance: trained here by zhlora.models.chatglm.tiny.write_tokenizer (sentencepiece 0.2.3) on
its built-in 9-line corpus; nothing copied. Same special-token layout as THUDM's vocabularies:
v1/ = ChatGLM-6B (ice_text.model), v2/ = ChatGLM2/3 (tokenizer.model), glm4/ = GLM-4 (tiktoken).
"""
from pathlib import Path

from zhlora.models.chatglm.tiny import write_tokenizer

HERE = Path(__file__).parent
for sub, version in (("v1", "chatglm"), ("v2", "chatglm3"), ("glm4", "glm4")):
    (HERE / sub).mkdir(exist_ok=True)
    write_tokenizer(HERE / sub, version)
