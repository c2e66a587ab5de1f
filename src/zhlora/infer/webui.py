"""`zhlora webui`: a small gradio chat page over an `Engine` (optional extra `webui`)."""
from __future__ import annotations

from zhlora.conversation import Conversation, Message
from zhlora.errors import ZhloraError
from zhlora.infer.engine import Engine

INSTALL_HINT = ("zhlora webui needs gradio, which is not installed. Install it with\n"
                "    pip install 'zhlora[webui]'      (or: pip install 'gradio>=4')\n"
                "or use `zhlora chat` (terminal) / `zhlora serve` (OpenAI API) instead")


def require_gradio():
    try:
        import gradio
    except ImportError:
        raise ZhloraError(INSTALL_HINT) from None
    return gradio


def _conversation(history: list[dict], text: str, system: str) -> Conversation:
    msgs = [Message(m["role"], m["content"]) for m in history if m.get("role") in ("user", "assistant")]
    return Conversation(msgs + [Message("user", text)], system=system)


def _messages_format(gr) -> dict:
    """gradio 4.x/5.x need type="messages"; gradio 6 removed the argument (messages only)."""
    import inspect

    return {"type": "messages"} if "type" in inspect.signature(gr.Chatbot.__init__).parameters else {}


def make_respond(engine: Engine):
    """The page's submit handler: streams (cleared textbox, updated messages history)."""

    def respond(text, history, adapter, system, max_new, temperature, top_p):
        name = None if adapter == "base" else adapter
        opts = engine.default_options(name).replace(max_new_tokens=int(max_new), temperature=float(temperature),
                                                    top_p=float(top_p))
        history = list(history or [])
        conv = _conversation(history, text, system)
        answer = ""
        for piece in engine.stream(conv, name, opts):
            answer += piece
            yield "", history + [{"role": "user", "content": text}, {"role": "assistant", "content": answer}]

    return respond


def build_blocks(engine: Engine, title: str = "zhlora"):
    """The gradio Blocks (chat box, adapter picker, decoding sliders); not yet launched."""
    gr = require_gradio()
    choices = ["base"] + engine.adapter_names
    respond = make_respond(engine)

    with gr.Blocks(title=title) as demo:
        gr.Markdown(f"### {title} — base: `{engine.base_dir}`")
        with gr.Row():
            adapter = gr.Dropdown(choices, value=choices[-1], label="adapter")
            system = gr.Textbox(label="system prompt", value="")
        chatbot = gr.Chatbot(height=420, **_messages_format(gr))
        box = gr.Textbox(label="message", placeholder="输入问题，回车发送")
        with gr.Row():
            max_new = gr.Slider(1, 2048, value=engine.default_options().max_new_tokens, step=1,
                                label="max_new_tokens")
            temperature = gr.Slider(0, 2, value=0, step=0.05, label="temperature (0 = greedy)")
            top_p = gr.Slider(0.05, 1, value=1, step=0.05, label="top_p")
        clear = gr.Button("clear")
        box.submit(respond, [box, chatbot, adapter, system, max_new, temperature, top_p], [box, chatbot])
        clear.click(lambda: [], None, chatbot)
    return demo


def webui_main(engine: Engine, host: str, port: int, share: bool = False) -> int:
    demo = build_blocks(engine)
    demo.queue().launch(server_name=host, server_port=port, share=share)
    return 0
