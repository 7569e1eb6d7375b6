"""Talk to the course's models in the browser: `python -m course.chat` serves a chat page.

A tool, not a chapter: hand-written (not exported from a notebook), it imports what the chapters
taught and adds only the page. Install its one extra dependency with `pip install -e ".[chat]"`
(Gradio). The page is served on 127.0.0.1 alone, runs offline (Gradio's analytics off, no share
link, its fonts from its own package) and uses the GPU where there is one (`--device` to choose).

- Models: chapter 5b's SmolLM2-135M-Instruct; the same model after stage 6b's instruction
  finetuning, once that chapter has saved its checkpoint; chapter 4's small GPT, which was
  trained on one short story and never taught to chat: it shows what the other two learned.
- Each answer streams in token by token: chapter 4's generate() draws one token per call
  (temperature, top-k), and chapter 4b's KVCachedModel feeds the model only that new token
  after the prompt, with its KV cache. The page shows tokens per second.
- SmolLM2, before and after 6b's finetuning, reads the conversation in chapter 5b's chat
  template (chat_prompt); chapter 4's model continues the text of the last message.
- Mistakes get a message in the page, and the server keeps running: an empty message, one
  longer than the context (the model sees its end, and the page says so), a checkpoint that is
  missing or was saved from another model.

Importing this module touches no file and no network and does not import Gradio.
"""
import argparse
import codecs
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from course.ch4_training import GPT_SMALL_CONFIG, get_device  # chapter 4
from course.ch4b_performance import GPTModelWithCache, KVCachedModel, generate  # chapter 4b
from course.ch5_saving import load_checkpoint  # chapter 5
from course.infra import DATA_DIR, ROOT, CourseError, display_path, prepare_tiktoken_offline  # not taught

HOST = "127.0.0.1"  # this machine only: the page is never reachable from another one
# Where the chapters save their models (`--finetuned` and `--small-gpt` choose other files).
FINETUNED_CHECKPOINT = DATA_DIR / "instruction-model-smollm2.pth"  # stage 6b, with SmolLM2 as its base
SMALL_GPT_CHECKPOINT = ROOT / "checkpoints" / "ch4-gpt-small.pt"  # chapter 4

SMOLLM2 = "SmolLM2-135M-Instruct (chapter 5b)"
FINETUNED = "SmolLM2 after instruction finetuning (stage 6b)"
SMALL_GPT = "Chapter 4's small GPT (never taught to chat)"
MODELS = (SMOLLM2, FINETUNED, SMALL_GPT)


class ChatError(CourseError):
    """A model cannot be loaded, or a message cannot be answered; the message says what to do."""


@dataclass
class ChatModel:
    """A model that takes a KV cache, its tokenizer, and how it reads a conversation."""
    model: torch.nn.Module
    tokenizer: object  # encode(), decode_bytes()
    prompt: Callable[[list[dict]], str]  # the conversation -> the text the model continues
    eos_id: int  # where its answer ends
    allowed_special: frozenset  # the special tokens its prompt may hold


def load_smollm2_model(device):
    """SmolLM2-135M-Instruct, reading the conversation in its chat template (chapter 5b)."""
    from course.ch5b_modern import chat_prompt, load_smollm2  # chapter 5b

    model, tokenizer = load_smollm2(device)
    return ChatModel(model, tokenizer, chat_prompt, tokenizer.eos_id, frozenset({"<|im_start|>", "<|im_end|>"}))


def checked_path(path, what, how_to_make):
    path = Path(path)
    if not path.is_file():
        raise ChatError(f"No checkpoint for {what} at {display_path(path)}. {how_to_make}")
    return path


def load_finetuned_model(path, device):
    """SmolLM2 with the weights stage 6b saved (chapter 5's save_checkpoint). 6b finetuned it in
    its own chat format, ChatML, so it reads the conversation as the base model does."""
    path = checked_path(path, "the finetuned SmolLM2", "Run finetune/LLM-finetune-instructions.ipynb (with "
                        "BASE_MODEL = \"smollm2\"), which saves it there, or start the chat with --finetuned PATH.")
    chat_model = load_smollm2_model("cpu")  # a model of the right shape, its tokenizer and template
    load_checkpoint(path, chat_model.model)  # CheckpointError if it was saved from a model of another config
    chat_model.model.to(device).eval()
    return chat_model


def load_small_gpt(path, device):
    """Chapter 4's GPT and GPT-2's tokenizer; it continues the last message as text, the only
    thing it was trained to do."""
    import tiktoken

    path = checked_path(path, "chapter 4's small GPT", "Run training/LLM-training.ipynb, which saves it "
                        "there, or start the chat with --small-gpt PATH.")
    config = load_checkpoint(path).get("config") or GPT_SMALL_CONFIG
    model = GPTModelWithCache(config)  # chapter 3's GPTModel, taking 4b's KV cache
    load_checkpoint(path, model)  # CheckpointError if it was saved from a model of another config
    prepare_tiktoken_offline()
    tokenizer = tiktoken.get_encoding("gpt2")
    return ChatModel(model.to(device).eval(), tokenizer, lambda messages: messages[-1]["content"],
                     tokenizer.eot_token, frozenset())


def fit_prompt(chat_model, messages, budget):
    """The prompt's token ids, at most `budget` of them, and a note for the page when something
    was left out: the oldest messages first, then the start of the last one."""
    def encode(msgs):
        return chat_model.tokenizer.encode(chat_model.prompt(msgs), allowed_special=chat_model.allowed_special)

    ids = encode(messages)
    if len(ids) <= budget:
        return ids, None
    dropped = 0
    while len(ids) > budget and len(messages) > 1:  # older turns, oldest first
        messages, dropped = messages[1:], dropped + 1
        ids = encode(messages)
    note = f"The conversation was too long: the model did not see its oldest {dropped} message(s). " if dropped else ""
    if len(ids) > budget:
        last = messages[-1]["content"]
        own = chat_model.tokenizer.encode(last, allowed_special=chat_model.allowed_special)
        frame = len(ids) - len(own)  # the template's tokens around the message
        if frame >= budget:
            raise ChatError(f"The chat template alone takes {frame} tokens, more than the {budget} the model can "
                            f"read here; lower 'Max new tokens' or start the chat with a larger --context.")
        keep = budget - frame
        while True:  # decoding and encoding again can shift a token or two at the cut
            text = bytes(chat_model.tokenizer.decode_bytes(own[-keep:])).decode("utf-8", errors="ignore")
            ids = encode(messages[:-1] + [{"role": messages[-1]["role"], "content": text}])
            if len(ids) <= budget:
                break
            keep -= len(ids) - budget
        note += (f"Your message has {len(own):,} tokens, more than fits: with room for the answer the model "
                 f"reads {budget:,} tokens, so it saw only the last {keep:,} of your message.")
    return ids, note


def stream_answer(chat_model, ids, max_new_tokens, temperature, top_k, device):
    """Yield (answer so far, tokens so far, seconds for the prompt, tokens/s after it), one new
    token at a time: chapter 4's generate() draws it from the logits (temperature, top-k), and
    chapter 4b's KVCachedModel runs the prompt once, then only the newest token, with the cache."""
    cached = KVCachedModel(chat_model.model)  # a fresh cache for this answer
    idx = torch.tensor([ids], device=device)
    utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")  # a character may span tokens
    answer, start = "", time.perf_counter()
    prompt_seconds = None
    for n in range(1, max_new_tokens + 1):
        idx = generate(cached, idx, 1, len(ids) + max_new_tokens, temperature, top_k)
        token = idx[0, -1].item()
        if prompt_seconds is None:  # the first token came with the whole prompt's forward pass
            prompt_seconds, start = time.perf_counter() - start, time.perf_counter()
        if token == chat_model.eos_id:
            break
        answer += utf8.decode(bytes(chat_model.tokenizer.decode_bytes([token])))
        rate = (n - 1) / (time.perf_counter() - start) if n > 1 else 0.0
        yield answer, n, prompt_seconds, rate
    rest = utf8.decode(b"", final=True)  # the bytes of a character the answer stopped inside
    if rest:
        yield answer + rest, n, prompt_seconds, rate


class ChatServer:
    """What the page calls: loads each model on first use, keeps it, and answers."""

    def __init__(self, device, context=None, finetuned=FINETUNED_CHECKPOINT, small_gpt=SMALL_GPT_CHECKPOINT):
        self.device = torch.device(device)
        self.context = context
        self.loaders = {SMOLLM2: lambda: load_smollm2_model(self.device),
                        FINETUNED: lambda: load_finetuned_model(finetuned, self.device),
                        SMALL_GPT: lambda: load_small_gpt(small_gpt, self.device)}
        self.loaded = {}

    def model(self, name):
        if name not in self.loaders:
            raise ChatError(f"Unknown model {name!r}; pick one of {list(self.loaders)}.")
        if name not in self.loaded:  # a failed load is not kept: fix the file and send again
            self.loaded[name] = self.loaders[name]()
        return self.loaded[name]

    def window(self, chat_model):
        """The most tokens (prompt and answer) one answer may use."""
        own = chat_model.model.context_length
        return own if self.context is None else min(own, self.context)

    def respond(self, message, history, model_name, temperature, top_k, max_new_tokens):
        """Yield the chat's reply as it grows: a list of messages (a note, if any, then the
        answer) and a status line with the speed."""
        if not message or not message.strip():
            yield [notice("Type a message first: an empty message gives the model nothing to answer.")], ""
            return
        messages = conversation(history) + [{"role": "user", "content": message}]
        if model_name not in self.loaded:
            yield [notice(f"Loading {model_name} ...")], ""
        try:
            chat_model = self.model(model_name)
            window = self.window(chat_model)
            max_new_tokens = min(int(max_new_tokens), window - 1)
            ids, note = fit_prompt(chat_model, messages, window - max_new_tokens)
        except (CourseError, OSError, ValueError) as exc:  # OSError: a file that cannot be read
            yield [notice(f"{model_name} cannot answer: {exc}")], ""
            return
        before = [notice(note)] if note else []
        status = ""
        answer = ""
        for answer, n, prompt_seconds, rate in stream_answer(chat_model, ids, max_new_tokens, float(temperature),
                                                              int(top_k) or None, self.device):
            status = (f"{model_name} · {self.device.type} · prompt: {len(ids):,} tokens in {prompt_seconds:.2f} s"
                      f" · answer: {n} tokens, {rate:.1f} tokens/s")
            yield before + [answer], status
        if not answer:
            yield before + [notice("The model ended its answer at once: its first token was end-of-answer.")], status


def notice(text):
    """A message from the page, not from the model: shown apart, and never sent to the model."""
    return {"role": "assistant", "content": text, "metadata": {"title": "ℹ️ Note"}}


def conversation(history):
    """The user's and the model's messages from the page's history, without the page's notes."""
    messages = []
    for m in history:
        content = m["content"]
        if isinstance(content, list):  # Gradio may hand text as a list of parts
            content = "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
        if (m.get("metadata") or {}).get("title") or not content.strip():  # a note, or an empty message
            continue
        messages.append({"role": m["role"], "content": content})
    return messages


def build_page(server, max_new_tokens=256):
    import gradio as gr

    with gr.Blocks(title="Chat with the course's models") as page:
        gr.Markdown("## Chat with the course's models\nThe models run on this machine; nothing leaves it.")
        with gr.Row():
            model_name = gr.Dropdown(list(MODELS), value=SMOLLM2, label="Model", scale=3)
            temperature = gr.Slider(0.0, 2.0, value=0.0, step=0.05, label="Temperature (0: greedy)", scale=2)
            top_k = gr.Slider(0, 200, value=50, step=1, label="Top-k (0: all tokens)", scale=2)
            max_new = gr.Slider(1, 1024, value=max_new_tokens, step=1, label="Max new tokens", scale=2)
        with gr.Row():
            status = gr.Markdown("", elem_id="chat-status")
            new_chat = gr.Button("New chat", elem_id="new-chat", variant="secondary", size="sm", scale=0,
                                 min_width=120)
        chatbot = gr.Chatbot(height=420, elem_id="chatbot", label="Conversation", buttons=["copy", "copy_all"])
        textbox = gr.Textbox(placeholder="Ask something ...", elem_id="message", submit_btn=True, stop_btn=True)
        chat = gr.ChatInterface(server.respond, chatbot=chatbot, textbox=textbox,
                                additional_inputs=[model_name, temperature, top_k, max_new],
                                additional_outputs=[status],
                                concurrency_limit=1, fill_height=False, api_visibility="private")
        new_chat.click(lambda: ([], [], ""), outputs=[chat.chatbot, chat.chatbot_state, status], queue=False)
    return page


def free_port():
    import socket

    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m course.chat", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=None, help="default: a free port")
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: the fastest here)")
    parser.add_argument("--context", type=int, default=None,
                        help="the most tokens (conversation and answer) a model reads; default: its context_length")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="the page's first value")
    parser.add_argument("--finetuned", default=FINETUNED_CHECKPOINT, help="stage 6b's checkpoint")
    parser.add_argument("--small-gpt", default=SMALL_GPT_CHECKPOINT, help="chapter 4's checkpoint")
    args = parser.parse_args(argv)
    if args.context is not None and args.context < 2:
        parser.error("--context must be at least 2 tokens (a prompt token and an answer token)")
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before Gradio is imported: it sends no usage data
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise SystemExit('The chat page needs Gradio: pip install -e ".[chat]" (from the course folder).')
    device = torch.device(args.device) if args.device else get_device()
    if (device.type == "cuda" and not torch.cuda.is_available()) or (device.type == "mps" and not
                                                                      torch.backends.mps.is_available()):
        parser.error(f"--device {args.device}: PyTorch sees no such device here; try --device cpu")
    server = ChatServer(device, args.context, args.finetuned, args.small_gpt)
    page = build_page(server, args.max_new_tokens)
    port = args.port or free_port()
    page.queue()
    page.launch(server_name=HOST, server_port=port, share=False, inbrowser=False, quiet=True,
                prevent_thread_lock=True, ssr_mode=False, mcp_server=False, enable_monitoring=False,
                footer_links=[], show_error=True)
    print(f"Chat page: http://{HOST}:{port}/  (on {device.type}; Ctrl+C stops it)", flush=True)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl+C, even when started in the background
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # `kill`: the same clean stop
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        print("Stopping the chat page.", flush=True)
    finally:
        page.close()


if __name__ == "__main__":
    main()
