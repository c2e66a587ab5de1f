"""Native ChatGLM family: ChatGLM-6B, ChatGLM2-6B, ChatGLM3-6B and GLM-4 (original `chatglm`
format) without remote code.

Importing this package (done by `import zhlora`) registers, with transformers' Auto classes:
`AutoConfig` "chatglm" -> `ChatGLMConfig`; `AutoModel` / `AutoModelForCausalLM` -> a loader
that picks the v1 or v2 class from the config; `AutoTokenizer` names `ChatGLMTokenizer` and
`ChatGLM4Tokenizer` (what THUDM's tokenizer_config.json files ask for) -> zhlora's classes.
It also registers the chat templates and the `chatglm` family.
"""
from __future__ import annotations

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

from zhlora.models.chatglm.configuration import ChatGLMConfig, GLMSpec, glm_spec
from zhlora.models.chatglm.modeling_v1 import ChatGLM6BForConditionalGeneration
from zhlora.models.chatglm.modeling_v2 import ChatGLM2ForConditionalGeneration
from zhlora.models.chatglm.tokenization import ChatGLM2Tokenizer, ChatGLM6BTokenizer, ChatGLMTokenizer
from zhlora.models.chatglm.tokenization_glm4 import ChatGLM4Tokenizer


def _model_class_for(config):
    return ChatGLM6BForConditionalGeneration if glm_spec(config).version == 1 else ChatGLM2ForConditionalGeneration


class ChatGLMForConditionalGeneration:
    """What transformers' Auto classes hold for model_type "chatglm": it picks the
    generation-specific class (ChatGLM-6B or ChatGLM2/3/GLM-4) from the config."""

    config_class = ChatGLMConfig

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, config=None, **kwargs):
        if config is None:
            config = ChatGLMConfig.from_pretrained(pretrained_model_name_or_path,
                                                   local_files_only=kwargs.get("local_files_only", False))
        return _model_class_for(config).from_pretrained(pretrained_model_name_or_path, *args,
                                                        config=config, **kwargs)

    @classmethod
    def _from_config(cls, config, **kwargs):
        return _model_class_for(config)._from_config(config, **kwargs)

    from_config = _from_config


AutoConfig.register("chatglm", ChatGLMConfig, exist_ok=True)
AutoModel.register(ChatGLMConfig, ChatGLMForConditionalGeneration, exist_ok=True)
AutoModelForCausalLM.register(ChatGLMConfig, ChatGLMForConditionalGeneration, exist_ok=True)
# Both names resolve (what THUDM's tokenizer_config.json files ask for); the one registered
# last is also the class for a chatglm folder whose tokenizer_config names none.
AutoTokenizer.register(ChatGLMConfig, slow_tokenizer_class=ChatGLM4Tokenizer, exist_ok=True)
AutoTokenizer.register(ChatGLMConfig, slow_tokenizer_class=ChatGLMTokenizer, exist_ok=True)

from zhlora.models.chatglm import family, templates  # noqa: E402,F401  (registrations)

__all__ = ["ChatGLMConfig", "GLMSpec", "glm_spec", "ChatGLMForConditionalGeneration",
           "ChatGLM6BForConditionalGeneration", "ChatGLM2ForConditionalGeneration",
           "ChatGLMTokenizer", "ChatGLM6BTokenizer", "ChatGLM2Tokenizer", "ChatGLM4Tokenizer"]
