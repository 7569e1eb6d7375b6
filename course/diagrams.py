"""The course's conceptual diagrams, drawn with matplotlib in one style (not taught).

A notebook shows one with `diagrams.show("gpt_model")`: the picture is an ordinary matplotlib
figure, so it is stored in the notebook as a PNG and appears in JupyterLab, in the slide decks
and on the repository's web view of the notebook alike, with no network. To change a diagram,
edit its function below and re-run the notebook cell. The names and shapes in the boxes are the
ones of the code beside them.
"""
import math

# One style for every diagram: what a box holds decides its colour.
COLORS = {
    "data": ("#e8f1fb", "#2f6db3"),    # tensors and text: (fill, edge)
    "module": ("#fdf0e2", "#c06a12"),  # layers with weights
    "op": ("#eaf6ea", "#2e7d32"),      # operations without weights
    "loss": ("#fbe9ec", "#b3263e"),    # losses, masks, what is dropped
    "note": ("#f4f4f4", "#888888"),    # remarks, shapes
}
FONT = 13  # readable on a projector at the figure sizes below


def _canvas(width, height, title=None):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(width, height))
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.set_aspect("equal")
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=FONT + 2, fontweight="bold", loc="left")
    return fig, ax


def box(ax, x, y, text, kind="data", w=2.2, h=0.8, size=FONT, bold=False):
    """A rounded box centred at (x, y); returns its centre and half sizes for arrows."""
    from matplotlib.patches import FancyBboxPatch

    fill, edge = COLORS[kind]
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.02,rounding_size=0.12",
                                facecolor=fill, edgecolor=edge, linewidth=1.6))
    ax.text(x, y, text, ha="center", va="center", fontsize=size, color="#1a1a1a",
            fontweight="bold" if bold else "normal", family="DejaVu Sans")
    return (x, y, w / 2, h / 2)


def _edge_point(b, towards):
    """Where the line from box b's centre to `towards` leaves the box."""
    x, y, hw, hh = b
    dx, dy = towards[0] - x, towards[1] - y
    if dx == 0 and dy == 0:
        return x, y
    scale = min(hw / abs(dx) if dx else math.inf, hh / abs(dy) if dy else math.inf)
    return x + dx * scale, y + dy * scale


def arrow(ax, a, b, text=None, color="#444444", style="-|>", rad=0.0, text_offset=(0, 0.22), size=FONT - 2):
    """An arrow from box (or point) a to box (or point) b, with an optional label at its middle."""
    from matplotlib.patches import FancyArrowPatch

    pa = a[:2] if len(a) == 2 else _edge_point(a, b[:2])
    pb = b[:2] if len(b) == 2 else _edge_point(b, a[:2])
    ax.add_patch(FancyArrowPatch(pa, pb, arrowstyle=style, mutation_scale=16, color=color, linewidth=1.5,
                                 connectionstyle=f"arc3,rad={rad}", shrinkA=2, shrinkB=2))
    if text:
        ax.text((pa[0] + pb[0]) / 2 + text_offset[0], (pa[1] + pb[1]) / 2 + text_offset[1], text,
                ha="center", va="bottom", fontsize=size, color=color, family="DejaVu Sans")


def note(ax, x, y, text, size=FONT - 2, color="#555555", ha="center"):
    ax.text(x, y, text, ha=ha, va="center", fontsize=size, color=color, family="DejaVu Sans")


def grid(ax, x, y, values, cell=0.55, kinds=None, size=FONT - 2, labels_left=None, labels_top=None, height=None):
    """A small table of values (a tensor), top-left corner at (x, y); kinds colours cells."""
    from matplotlib.patches import Rectangle

    height = cell if height is None else height
    for i, row in enumerate(values):
        for j, value in enumerate(row):
            kind = kinds[i][j] if kinds else "data"
            fill, edge = COLORS[kind]
            ax.add_patch(Rectangle((x + j * cell, y - (i + 1) * height), cell, height, facecolor=fill,
                                   edgecolor=edge, linewidth=1.0))
            ax.text(x + (j + 0.5) * cell, y - (i + 0.5) * height, str(value), ha="center", va="center",
                    fontsize=size, family="DejaVu Sans")
    for i, label in enumerate(labels_left or []):
        ax.text(x - 0.1, y - (i + 0.5) * height, label, ha="right", va="center", fontsize=size)
    for j, label in enumerate(labels_top or []):
        ax.text(x + (j + 0.5) * cell, y + 0.1, label, ha="center", va="bottom", fontsize=size)


def chain(ax, items, y, x0, dx, w=2.2, h=0.8, labels=None):
    """Boxes left to right at height y, each (text, kind), joined by arrows; returns the boxes."""
    boxes = [box(ax, x0 + i * dx, y, text, kind, w=w, h=h) for i, (text, kind) in enumerate(items)]
    for i, (a, b) in enumerate(zip(boxes, boxes[1:])):
        arrow(ax, a, b, labels[i] if labels else None)
    return boxes


def column(ax, items, x, y0, dy, w=3.6, h=0.7, labels=None, size=FONT):
    """Boxes top to bottom from height y0, each (text, kind), joined by arrows."""
    boxes = [box(ax, x, y0 - i * dy, text, kind, w=w, h=h, size=size) for i, (text, kind) in enumerate(items)]
    for i, (a, b) in enumerate(zip(boxes, boxes[1:])):
        arrow(ax, a, b, labels[i] if labels else None, text_offset=(0.9, -0.12))
    return boxes


# --- Chapter 1: data ----------------------------------------------------------------------------

def text_to_embeddings():
    fig, ax = _canvas(16, 3.8, "From raw text to the model's input")
    items = [('"Every effort\nmoves you"', "data"), ("tokens\n'Every', ' effort'", "data"),
             ("token IDs\n[6109, 3626, ...]", "data"), ("windows\ninputs, targets", "data"),
             ("batches\n(batch, max_length)", "data"), ("tok_emb + pos_emb", "module"),
             ("input embeddings\n(batch, T, emb_dim)", "data")]
    boxes = [box(ax, 1.2 + i * 2.27, 1.9, text, kind, w=2.05, h=1.2, size=FONT - 2) for i, (text, kind) in enumerate(items)]
    for a, b, label in zip(boxes, boxes[1:], ["BPE", "vocabulary", "sliding window", "DataLoader",
                                              "nn.Embedding", "sum"]):
        arrow(ax, a, b)
        note(ax, (a[0] + b[0]) / 2, 0.75, label, size=FONT - 3)
    return fig


def sliding_windows():
    fig, ax = _canvas(13, 4.4, "Sliding windows (max_length = 4, stride = 4): targets are inputs moved one token right")
    ids = [40, 367, 2885, 1464, 1807, 3619, 402, 271, 10899]
    x0, cell, h = 2.0, 1.15, 0.6
    grid(ax, x0, 3.9, [ids], cell=cell, height=h, labels_left=["token IDs"],
         labels_top=[f"{i}" for i in range(len(ids))])
    rows = [("input 0", 0, "data"), ("target 0", 1, "op"), ("input 1", 4, "data"), ("target 1", 5, "op")]
    for k, (label, start, kind) in enumerate(rows):
        y = 3.0 - k * 0.7
        grid(ax, x0 + start * cell, y, [ids[start:start + 4]], cell=cell, height=h, kinds=[[kind] * 4])
        note(ax, x0 + start * cell - 0.1, y - h / 2, label, size=FONT - 2, ha="right")
    return fig


def bpe_pieces():
    fig, ax = _canvas(13, 3.2, "Byte-pair encoding: any text, a fixed vocabulary")
    word = box(ax, 1.6, 1.6, '" someunknownPlace"', "data", w=2.8, h=0.9)
    pieces = [" some", "unknown", "Place"]
    ids = [617, 34680, 27271]
    for i, (piece, token_id) in enumerate(zip(pieces, ids)):
        p = box(ax, 5.2 + i * 2.4, 2.2, repr(piece).replace(" ", "␣"), "data", w=2.0, h=0.7)
        t = box(ax, 5.2 + i * 2.4, 0.8, str(token_id), "op", w=2.0, h=0.7)
        arrow(ax, p, t)
        if i == 0:
            arrow(ax, word, p, "pieces it knows", text_offset=(0, 0.1))
    note(ax, 11.9, 2.2, "sub-word\npieces")
    note(ax, 11.9, 0.8, "token IDs\n(of 50,257)")
    return fig


def embedding_lookup():
    fig, ax = _canvas(14, 4.6, "Token and position embeddings are added: the model's input")
    grid(ax, 0.6, 3.6, [[40, 367, 2885, 1464]], cell=0.9, labels_top=["pos 0", "pos 1", "pos 2", "pos 3"])
    note(ax, 2.4, 4.25, "token IDs (batch, tokens)")
    tok = box(ax, 6.0, 3.15, "tok_emb: row of each ID\n(vocab_size × emb_dim)", "module", w=3.8, h=0.95)
    pos = box(ax, 6.0, 1.45, "pos_emb: row of each position\n(context_length × emb_dim)", "module", w=3.8, h=0.95)
    plus = box(ax, 9.2, 2.3, "+", "op", w=0.7, h=0.7, size=FONT + 4)
    out = box(ax, 12.0, 2.3, "input embeddings\n(batch, tokens, emb_dim)", "data", w=3.4, h=0.95)
    arrow(ax, (4.3, 3.15), tok)
    arrow(ax, (2.4, 1.45), pos, "0, 1, 2, 3", text_offset=(-0.6, 0.05))
    arrow(ax, tok, plus)
    arrow(ax, pos, plus)
    arrow(ax, plus, out)
    note(ax, 2.4, 0.5, "the same token at two positions gets two different inputs", size=FONT - 2)
    return fig


# --- Chapter 2: attention -----------------------------------------------------------------------

def attention_weighted_sum():
    fig, ax = _canvas(14, 4.2, "Attention for one query: scores, softmax, weighted sum")
    words = ["Your", "journey", "starts", "with", "one", "step"]
    scores = [0.9544, 1.4950, 1.4754, 0.8434, 0.7070, 1.0865]  # x2 . xi for chapter 2's six inputs
    exp = [math.exp(s) for s in scores]
    weights = [e / sum(exp) for e in exp]
    x0, cell = 2.3, 1.45
    for i, word in enumerate(words):
        box(ax, x0 + (i + 0.5) * cell, 3.5, word, "data", w=1.3, h=0.6, size=FONT - 1)
    note(ax, 1.0, 3.5, "inputs xᵢ", size=FONT - 1)
    note(ax, 1.0, 2.3, "scores\nx₂ · xᵢ", size=FONT - 2)
    grid(ax, x0, 2.6, [[f"{v:.2f}" for v in scores]], cell=cell, height=0.6, kinds=[["op"] * 6])
    note(ax, 1.0, 1.2, "softmax:\nweights", size=FONT - 2)
    grid(ax, x0, 1.5, [[f"{v:.2f}" for v in weights]], cell=cell, height=0.6, kinds=[["module"] * 6])
    ctx = box(ax, 12.7, 1.2, "context z₂ =\nΣ weightᵢ · xᵢ", "data", w=2.3, h=1.0)
    arrow(ax, (x0 + 6 * cell, 1.2), ctx)
    note(ax, 6.65, 0.35, "query: x₂ = 'journey'; the weights sum to 1", size=FONT - 2)
    return fig


def qkv_projections():
    fig, ax = _canvas(15, 4.4, "Self-attention with trainable weights")
    x = box(ax, 1.0, 2.2, "x\n(tokens, d_in)", "data", w=1.8, h=1.0)
    rows = [("W_query", "Q = x W_q", 3.6), ("W_key", "K = x W_k", 2.2), ("W_value", "V = x W_v", 0.8)]
    outs = {}
    for name, result, y in rows:
        w = box(ax, 3.6, y, name, "module", w=1.8, h=0.7)
        r = box(ax, 6.1, y, result, "data", w=2.0, h=0.7)
        arrow(ax, x, w)
        arrow(ax, w, r)
        outs[name] = r
    scores = box(ax, 8.9, 2.9, "scores\nQ Kᵀ", "op", w=1.8, h=0.9)
    soft = box(ax, 11.2, 2.9, "softmax(\nscores / √d_k)", "op", w=2.1, h=0.9)
    ctx = box(ax, 13.6, 1.6, "context\nweights · V\n(tokens, d_out)", "data", w=2.2, h=1.2)
    arrow(ax, outs["W_query"], scores)
    arrow(ax, outs["W_key"], scores)
    arrow(ax, scores, soft)
    arrow(ax, soft, ctx)
    arrow(ax, outs["W_value"], ctx)
    return fig


def causal_mask():
    fig, ax = _canvas(13, 4.8, "The causal mask: a token sees itself and the tokens before it")
    words = ["Your", "journey", "starts", "with", "one", "step"]
    scores = [["s" if j <= i else "−∞" for j in range(6)] for i in range(6)]
    kinds = [["op" if j <= i else "loss" for j in range(6)] for i in range(6)]
    grid(ax, 1.6, 4.1, scores, cell=0.6, kinds=kinds, labels_left=words, labels_top=[w[:4] for w in words])
    arrow(ax, (5.4, 2.3), (7.0, 2.3))
    note(ax, 6.2, 2.75, "softmax,\nrow by row", size=FONT - 2)
    weights = [[f"{1 / (i + 1):.2f}" if j <= i else "0" for j in range(6)] for i in range(6)]
    kinds = [["module" if j <= i else "loss" for j in range(6)] for i in range(6)]
    grid(ax, 7.4, 4.1, weights, cell=0.6, kinds=kinds, labels_top=[w[:4] for w in words])
    note(ax, 3.4, 0.2, "scores.masked_fill(mask, -inf) above the diagonal", size=FONT - 3)
    note(ax, 9.2, 0.2, "(equal scores shown: each row shares its weight among the visible tokens)", size=FONT - 3)
    return fig


def head_split():
    fig, ax = _canvas(15, 4.6, "Multi-head attention: split into heads with view/transpose, join again")
    a = box(ax, 1.4, 3.6, "W_query(x)\n(b, T, d_out)", "data", w=2.4, h=0.9)
    b = box(ax, 4.7, 3.6, ".view(b, T, h, head_dim)", "op", w=3.2, h=0.8)
    c = box(ax, 8.5, 3.6, ".transpose(1, 2)\n(b, h, T, head_dim)", "op", w=3.0, h=0.9)
    arrow(ax, a, b)
    arrow(ax, b, c)
    heads = [box(ax, 7.2 + i * 1.3, 2.1, f"head {i}", "module", w=1.1, h=0.7, size=FONT - 2) for i in range(3)]
    for hd in heads:
        arrow(ax, c, hd)
    note(ax, 11.5, 2.1, "each head: causal\nattention on head_dim", size=FONT - 2)
    d = box(ax, 8.5, 0.7, "transpose back, .view(b, T, d_out)\nheads side by side", "op", w=4.2, h=0.9)
    for hd in heads:
        arrow(ax, hd, d)
    e = box(ax, 13.3, 0.7, "out_proj\n(d_out × d_out)", "module", w=2.2, h=0.9)
    arrow(ax, d, e)
    note(ax, 2.6, 1.4, "d_out = num_heads × head_dim\none matrix product computes\nall heads' queries at once",
         size=FONT - 2)
    return fig


# --- Chapter 3: architecture --------------------------------------------------------------------

def gpt_model():
    fig, ax = _canvas(10, 7.6, "GPTModel, end to end")
    items = [("token IDs (batch, T)", "data"), ("tok_emb + pos_emb", "module"), ("drop_emb (dropout)", "op"),
             ("TransformerBlock × n_layers", "module"), ("final_norm (LayerNorm)", "module"),
             ("out_head: Linear(emb_dim, vocab_size)", "module"), ("logits (batch, T, vocab_size)", "data")]
    column(ax, items, 3.6, 6.8, 1.05, w=5.2, h=0.7)
    note(ax, 8.3, 6.8 - 1.05, "(batch, T, emb_dim)", size=FONT - 2)
    note(ax, 8.3, 6.8 - 3 * 1.05, "(batch, T, emb_dim)\n12 blocks in GPT-2 small", size=FONT - 2)
    return fig


def transformer_block():
    import matplotlib.lines as mlines

    fig, ax = _canvas(10, 8.2, "TransformerBlock: pre-LayerNorm, two shortcuts")
    blue = "#2f6db3"
    x_in = box(ax, 4.0, 7.5, "x (batch, T, emb_dim)", "data", w=3.6, h=0.6)
    n1 = box(ax, 4.0, 6.5, "norm1 (LayerNorm)", "module", w=3.6, h=0.6)
    att = box(ax, 4.0, 5.6, "att: MultiHeadAttention", "module", w=3.6, h=0.6)
    d1 = box(ax, 4.0, 4.7, "drop_shortcut", "op", w=3.6, h=0.6)
    add1 = box(ax, 4.0, 3.9, "+", "op", w=0.6, h=0.5, size=FONT + 2)
    n2 = box(ax, 4.0, 3.0, "norm2 (LayerNorm)", "module", w=3.6, h=0.6)
    ff = box(ax, 4.0, 2.1, "ff: FeedForward", "module", w=3.6, h=0.6)
    d2 = box(ax, 4.0, 1.2, "drop_shortcut", "op", w=3.6, h=0.6)
    add2 = box(ax, 4.0, 0.4, "+", "op", w=0.6, h=0.5, size=FONT + 2)
    for a, b in [(x_in, n1), (n1, att), (att, d1), (d1, add1), (add1, n2), (n2, ff), (ff, d2), (d2, add2)]:
        arrow(ax, a, b)
    for (y_top, y_add, x_side) in [(7.05, 3.9, 1.6), (3.5, 0.4, 6.4)]:  # the two shortcuts
        ax.add_line(mlines.Line2D([4.0, x_side, x_side], [y_top, y_top, y_add], color=blue, linewidth=1.5))
        arrow(ax, (x_side, y_add), (4.0 + (0.3 if x_side > 4 else -0.3), y_add), color=blue)
    note(ax, 1.0, 5.5, "shortcut\nx + ...", size=FONT - 2, color=blue)
    note(ax, 7.3, 2.0, "shortcut\nx + ...", size=FONT - 2, color=blue)
    note(ax, 7.6, 0.4, "out: the shape of x", size=FONT - 2)
    return fig


def feed_forward():
    fig, ax = _canvas(13, 2.8, "FeedForward: expand, GELU, project back")
    items = [("x\n(batch, T, 768)", "data"), ("Linear\n768 → 3072", "module"), ("GELU", "op"),
             ("Linear\n3072 → 768", "module"), ("out\n(batch, T, 768)", "data")]
    chain(ax, items, 1.3, 1.3, 2.6, w=2.2, h=1.1)
    note(ax, 6.5, 0.25, "every token on its own: the same weights at every position", size=FONT - 2)
    return fig


def layer_norm():
    fig, ax = _canvas(13, 3.0, "LayerNorm: each token's features to mean 0, variance 1, then scale and shift")
    items = [("one token's\nemb_dim features", "data"), ("− mean", "op"), ("÷ √(var + ε)", "op"),
             ("× scale + shift\n(trained)", "module"), ("normalised\nfeatures", "data")]
    chain(ax, items, 1.5, 1.3, 2.6, w=2.2, h=1.1)
    note(ax, 6.5, 0.35, "the statistics run over the last dimension: every token is normalised on its own",
         size=FONT - 2)
    return fig


def shortcut():
    fig, ax = _canvas(11, 3.2, "A shortcut (residual) connection")
    x = box(ax, 1.2, 1.6, "x", "data", w=1.2, h=0.8)
    f = box(ax, 4.6, 1.6, "layer f(x)", "module", w=2.4, h=0.8)
    plus = box(ax, 7.8, 1.6, "+", "op", w=0.7, h=0.7, size=FONT + 4)
    out = box(ax, 9.9, 1.6, "x + f(x)", "data", w=1.8, h=0.8)
    arrow(ax, x, f)
    arrow(ax, f, plus)
    arrow(ax, plus, out)
    arrow(ax, (1.2, 2.0), (7.8, 1.95), "the input, added back unchanged", color="#2f6db3", rad=-0.35,
          text_offset=(0, 0.55))
    note(ax, 5.5, 0.4, "backward: the gradient reaching x is g·(I + ∂f/∂x), so it has a path that skips f",
         size=FONT - 2)
    return fig


# --- Chapter 4: training ------------------------------------------------------------------------

def training_loop():
    fig, ax = _canvas(14, 5.0, "train_model_simple: one step, repeated")
    top = [("batch\ninputs, targets", "data"), ("optimizer.zero_grad()", "op"), ("logits = model(inputs)", "module")]
    bottom = [("optimizer.step()\n(AdamW)", "module"), ("loss.backward()", "op"), ("loss = cross_entropy", "loss")]
    t = [box(ax, 2.2 + i * 4.0, 4.0, text, kind, w=3.3, h=0.9, size=FONT - 1) for i, (text, kind) in enumerate(top)]
    b = [box(ax, 2.2 + i * 4.0, 2.2, text, kind, w=3.3, h=0.9, size=FONT - 1) for i, (text, kind) in enumerate(bottom)]
    arrow(ax, t[0], t[1])
    arrow(ax, t[1], t[2])
    arrow(ax, t[2], b[2])
    arrow(ax, b[2], b[1])
    arrow(ax, b[1], b[0])
    arrow(ax, b[0], t[0], "next batch", text_offset=(-0.9, -0.1))
    note(ax, 3.6, 0.7, "every eval_freq steps: evaluate_model (dropout off)", size=FONT - 2)
    note(ax, 10.4, 0.7, "after each epoch: generate_and_print_sample", size=FONT - 2)
    return fig


def cross_entropy():
    fig, ax = _canvas(14, 3.2, "Cross-entropy: how unlikely the model found the true next tokens")
    items = [("logits\n(batch, T, vocab)", "data"), ("softmax", "op"), ("probability of\neach target", "data"),
             ("− log", "op"), ("mean over\nall positions", "op"), ("loss", "loss")]
    chain(ax, items, 1.7, 1.2, 2.3, w=2.1, h=1.1)
    note(ax, 7.0, 0.35, "F.cross_entropy(logits.flatten(0, 1), targets.flatten()) in one call; perplexity = e^loss",
         size=FONT - 2)
    return fig


# --- Chapter 4b: performance --------------------------------------------------------------------

def kv_cache():
    fig, ax = _canvas(14, 4.6, "The KV cache: each step feeds only the new token")
    note(ax, 1.1, 3.9, "each layer\nkeeps:", size=FONT - 1)
    for i, word in enumerate(["Every", "effort", "moves", "you"]):
        box(ax, 2.9 + i * 1.6, 3.9, f"K, V\n{word}", "module", w=1.4, h=0.9, size=FONT - 2)
    new = box(ax, 9.6, 3.9, "K, V\nnew", "data", w=1.4, h=0.9, size=FONT - 2)
    tok = box(ax, 9.6, 1.5, "the new token only:\nmodel(idx[:, -1:], kv_cache)", "data", w=4.2, h=0.9)
    q = box(ax, 5.3, 1.5, "its query", "op", w=2.0, h=0.8)
    arrow(ax, tok, q)
    arrow(ax, tok, new)
    note(ax, 11.7, 2.75, "kv_cache.update\n(append)", size=FONT - 2)
    arrow(ax, q, (5.3, 3.4))
    note(ax, 3.3, 2.6, "attends to every\ncached key and its own", size=FONT - 2)
    note(ax, 7.0, 0.35, "positions start at the number cached; at the context length the cache is rebuilt",
         size=FONT - 2)
    return fig


def cache_rebuild():
    fig, ax = _canvas(14, 3.4, "generate() with KVCachedModel: tokens fed per step (context 4)")
    steps = [("prompt: 2", "data"), ("1", "op"), ("1", "op"), ("full window: 4", "module"), ("full window: 4", "module")]
    chain(ax, steps, 1.8, 1.4, 2.8, w=2.4, h=0.9)
    note(ax, 4.2, 0.6, "window grows: feed only the new token", size=FONT - 2)
    note(ax, 10.0, 0.6, "window slides: every position changes, rebuild", size=FONT - 2)
    return fig


# --- Chapter 4c: distributed --------------------------------------------------------------------

def ddp_allreduce():
    fig, ax = _canvas(14, 6.2, "DistributedDataParallel: one replica per rank, gradients averaged")
    ranks = []
    for r in range(2):
        x = 3.2 + r * 7.6
        shard = box(ax, x, 5.4, f"rank {r}: its shard\n(DistributedSampler)", "data", w=3.6, h=0.9)
        model = box(ax, x, 4.0, f"GPTModel replica {r}\nforward, loss", "module", w=3.6, h=0.9)
        grad = box(ax, x, 2.6, f"backward: gradient g{r}", "op", w=3.6, h=0.8)
        step = box(ax, x, 0.6, "optimizer.step()\nthe same update", "module", w=3.6, h=0.9)
        arrow(ax, shard, model)
        arrow(ax, model, grad)
        ranks.append((grad, step))
    red = box(ax, 7.0, 1.6, "all-reduce: ḡ = (g0 + g1) / 2", "loss", w=4.0, h=0.8)
    for grad, step in ranks:
        arrow(ax, grad, red)
        arrow(ax, red, step, "ḡ", text_offset=(0, 0.05))
    note(ax, 7.0, 4.0, "same weights\non every rank", size=FONT - 1)
    return fig


def distributed_sampler():
    fig, ax = _canvas(14, 3.2, "DistributedSampler: one seeded shuffle, every W-th index per rank")
    order = [3, 7, 0, 9, 4, 1, 8, 2, 6, 5]
    kinds = [["data" if k % 2 == 0 else "module" for k in range(10)]]
    grid(ax, 2.0, 2.6, [order], cell=0.9, kinds=kinds, labels_left=["shuffled"])
    grid(ax, 2.0, 1.2, [order[0::2]], cell=0.9, kinds=[["data"] * 5], labels_left=["rank 0"])
    grid(ax, 7.5, 1.2, [order[1::2]], cell=0.9, kinds=[["module"] * 5], labels_left=["rank 1"])
    return fig


# --- Chapter 5: saving and loading --------------------------------------------------------------

def checkpoint_contents():
    fig, ax = _canvas(14, 4.2, "save_checkpoint: everything a resume needs, written atomically")
    parts = [("model.state_dict()", "module"), ("optimizer.state_dict()\n(AdamW's m, v, step)", "module"),
             ("RNG state\n(dropout, shuffle)", "op"), ("step, config, extras", "note")]
    boxes = [box(ax, 1.9, 3.5 - i * 0.95, text, kind, w=3.4, h=0.8, size=FONT - 1) for i, (text, kind) in enumerate(parts)]
    tmp = box(ax, 6.8, 2.1, "torch.save to\n.ckpt.pt.XXXX.tmp\nflush + fsync", "data", w=3.0, h=1.3)
    final = box(ax, 11.6, 2.1, "ckpt.pt", "data", w=2.4, h=0.9)
    for b in boxes:
        arrow(ax, b, tmp)
    arrow(ax, tmp, final, "os.replace (atomic)")
    note(ax, 11.6, 0.6, "a crash before the rename\nleaves the old file intact", size=FONT - 2)
    return fig


def gpt2_mapping():
    fig, ax = _canvas(14, 5.2, "OpenAI's GPT-2 tensors into our GPTModel (one block)")
    src = box(ax, 2.4, 3.9, "h.i.attn.c_attn.weight\n(emb, 3·emb)", "data", w=3.8, h=0.9)
    for k, name in enumerate(["W_query", "W_key", "W_value"]):
        dst = box(ax, 10.5, 4.6 - k * 0.75, f"att.{name} (emb, emb)", "module", w=3.6, h=0.6, size=FONT - 1)
        arrow(ax, src, dst)
    note(ax, 6.6, 4.75, "chunk(3), then .T", size=FONT - 2)
    src2 = box(ax, 2.4, 1.5, "mlp.c_fc, mlp.c_proj, attn.c_proj\n(Conv1D: in × out)", "data", w=3.8, h=0.9, size=FONT - 2)
    dst2 = box(ax, 10.5, 1.5, "ff.layers[0], ff.layers[2], att.out_proj\n(nn.Linear: out × in)", "module", w=5.4, h=0.9,
               size=FONT - 2)
    arrow(ax, src2, dst2, ".T (transpose)")
    note(ax, 7.0, 0.35, "wte → tok_emb and out_head (tied in GPT-2); wpe → pos_emb; ln_1, ln_2, ln_f → norm1, norm2, final_norm",
         size=FONT - 3)
    return fig


# --- Chapter 1b: byte-pair encoding from scratch -----------------------------------------------

def bpe_training():
    fig, ax = _canvas(14, 4.2, "Training BPE: merge the most frequent adjacent pair, repeat")
    rows = [("a a a b d a a a b a c", "start: one token per byte"),
            ("Z a b d Z a b a c", "most frequent pair (a, a) becomes new token Z"),
            ("Z Y d Z Y a c", "then (a, b) becomes Y"),
            ("X d X a c", "then (Z, Y) becomes X")]
    for i, (tokens, what) in enumerate(rows):
        y = 3.5 - i * 0.85
        box(ax, 3.6, y, tokens, "data" if i == 0 else "op", w=5.6, h=0.6, size=FONT - 1)
        note(ax, 6.7, y, what, size=FONT - 2, ha="left")
        if i:
            arrow(ax, (3.6, y + 0.55), (3.6, y + 0.3))
    note(ax, 3.6, 0.2, "each merge adds one token to the vocabulary and makes the text shorter", size=FONT - 2)
    return fig


def gpt2_encode():
    fig, ax = _canvas(16, 3.6, "GPT-2's encoder, step by step")
    items = [('" Hello world!"', "data"), ("regex pieces\n' Hello', ' world', '!'", "op"),
             ("UTF-8 bytes,\nas printable chars\n'ĠHello'", "op"), ("merge the pair with\nthe lowest rank,\nrepeat",
                                                                 "module"),
             ("pieces in\nencoder.json", "data"), ("token IDs\n[18435, 995, 0]", "data")]
    boxes = [box(ax, 1.4 + i * 2.65, 1.9, text, kind, w=2.4, h=1.4, size=FONT - 2) for i, (text, kind) in enumerate(items)]
    for a, b in zip(boxes, boxes[1:]):
        arrow(ax, a, b)
    note(ax, 8.0, 0.45, "vocab.bpe: the 50,000 merges in rank order; encoder.json: piece -> ID; decoding runs it backwards",
         size=FONT - 2)
    return fig


# --- Chapter 6: finetuning ----------------------------------------------------------------------

def classification_head():
    fig, ax = _canvas(14, 4.8, "A classifier from a pretrained LLM: a new head, read at the last real token")
    tokens = ["You", "won", "$1000", "!", "⟨pad⟩", "⟨pad⟩"]
    for i, t in enumerate(tokens):
        box(ax, 1.4 + i * 1.5, 4.0, t, "loss" if t == "⟨pad⟩" else "data", w=1.3, h=0.6, size=FONT - 1)
    note(ax, 11.8, 4.0, "padded on the right with\nthe tokenizer's pad id", size=FONT - 2)
    box(ax, 5.1, 2.8, "transformer blocks (pretrained)", "module", w=8.6, h=0.7)
    last = box(ax, 5.9, 1.3, "output at the last\nreal token", "data", w=2.6, h=0.9)
    head = box(ax, 9.6, 1.3, "out_head:\nLinear(emb_dim, 2)", "module", w=2.6, h=0.9)
    out = box(ax, 12.7, 1.3, "not spam | spam", "data", w=2.4, h=0.7)
    arrow(ax, (5.9, 3.7), (5.9, 3.15))
    arrow(ax, (5.9, 2.45), last)
    arrow(ax, last, head)
    arrow(ax, head, out)
    return fig


def instruction_batch():
    fig, ax = _canvas(14, 4.6, "An instruction batch: pad, shift by one, mask with -100")
    inputs = [["p", "p", "r", "r", "e", "e"], ["p", "r", "e", "e", "e", "e"]]
    targets = [["-100", "r", "r", "e", "-100", "-100"], ["r", "e", "-100", "-100", "-100", "-100"]]
    kin = [["note" if v == "p" else "data" if v == "r" else "loss" for v in row] for row in inputs]
    kt = [["loss" if v == "-100" else "data" if v == "r" else "op" for v in row] for row in targets]
    grid(ax, 1.8, 3.6, inputs, cell=0.75, kinds=kin, labels_left=["ex 0", "ex 1"])
    grid(ax, 8.4, 3.6, targets, cell=0.75, kinds=kt)
    note(ax, 4.1, 4.0, "inputs", size=FONT - 1)
    note(ax, 10.7, 4.0, "targets (inputs shifted by one)", size=FONT - 1)
    arrow(ax, (6.6, 2.85), (8.2, 2.85))
    note(ax, 7.0, 1.0, "p: prompt (masked), r: response, e: <|endoftext|> (the first one is kept as a target:\n"
                       "the model learns to stop), -100: ignored by cross_entropy", size=FONT - 2)
    return fig


def frozen_layers():
    fig, ax = _canvas(12, 6.4, "Finetuning a classifier: what is frozen, what trains")
    items = [("tok_emb (+ pos_emb in GPT-2)", "note", "frozen"),
             ("transformer blocks 0 ... n-2", "note", "frozen: run once, outputs kept"),
             ("last transformer block", "module", "trained"), ("final_norm", "module", "trained"),
             ("new out_head: Linear(emb_dim, 2)", "loss", "new, trained")]
    boxes = [box(ax, 3.6, 5.5 - i * 1.1, text, kind, w=5.6, h=0.75) for i, (text, kind, _) in enumerate(items)]
    for a, b in zip(boxes, boxes[1:]):
        arrow(ax, a, b)
    for i, (_, _, what) in enumerate(items):
        note(ax, 6.8, 5.5 - i * 1.1, what, size=FONT - 1, ha="left")
    note(ax, 6.0, 0.3, "requires_grad = False on frozen parameters: no gradient, no update", size=FONT - 2)
    return fig


def alpaca_prompt():
    fig, ax = _canvas(14, 4.4, "One training example: the prompt (Alpaca format) and the response")
    prompt = box(ax, 4.3, 2.6, "Below is an instruction that describes a task. ...\n\n### Instruction:\n"
                                "Rewrite the sentence using a simile.\n\n### Input:\nThe car is very fast.\n\n### Response:",
                 "note", w=7.6, h=3.0, size=FONT - 2)
    response = box(ax, 11.2, 2.6, "The car is as fast\nas lightning.<|endoftext|>", "data", w=4.6, h=1.2, size=FONT - 1)
    arrow(ax, prompt, response)
    note(ax, 4.3, 0.55, "format_input(entry): masked in the targets (-100)", size=FONT - 2)
    note(ax, 11.2, 0.55, "entry['output']: the tokens the loss is computed on", size=FONT - 2)
    return fig


# --- Chapter 6c: LoRA ---------------------------------------------------------------------------

def lora_update():
    fig, ax = _canvas(14, 5.0, "LoRA: a frozen W plus a trainable low-rank path")
    x = box(ax, 1.3, 2.5, "x\n(…, d_in)", "data", w=1.8, h=1.0)
    w = box(ax, 6.2, 4.0, "W x   (frozen)\nW: d_out × d_in", "note", w=3.6, h=0.95)
    a = box(ax, 4.6, 1.1, "A x\nA: r × d_in\n(random start)", "module", w=2.6, h=1.2, size=FONT - 1)
    b = box(ax, 7.8, 1.1, "B (A x)\nB: d_out × r\n(zeros at start)", "module", w=2.6, h=1.2, size=FONT - 1)
    s = box(ax, 10.3, 1.1, "× alpha / r", "op", w=1.7, h=0.8)
    plus = box(ax, 10.3, 4.0, "+", "op", w=0.7, h=0.7, size=FONT + 4)
    out = box(ax, 12.8, 4.0, "h = W x\n+ (alpha/r) B A x", "data", w=2.2, h=1.1, size=FONT - 1)
    arrow(ax, x, w)
    arrow(ax, x, a)
    arrow(ax, a, b, "r numbers", text_offset=(0, 0.62))
    arrow(ax, b, s)
    arrow(ax, s, plus)
    arrow(ax, w, plus)
    arrow(ax, plus, out)
    note(ax, 6.2, 2.6, "trained: only A and B, r·(d_in + d_out) numbers instead of d_in·d_out", size=FONT - 2)
    return fig


def lora_merge():
    fig, ax = _canvas(14, 3.4, "Merging for inference: fold B A into W once")
    box(ax, 1.5, 1.9, "W (frozen)\nd_out × d_in", "note", w=2.4, h=1.0)
    note(ax, 3.2, 1.9, "+", size=FONT + 8, color="#1a1a1a")
    box(ax, 5.6, 1.9, "(alpha / r) · B A\n(d_out × r)(r × d_in)", "module", w=3.8, h=1.0)
    note(ax, 8.0, 1.9, "=", size=FONT + 8, color="#1a1a1a")
    box(ax, 11.0, 1.9, "W' : the weight of one\nplain nn.Linear(d_in, d_out)", "data", w=4.6, h=1.0)
    note(ax, 7.0, 0.45, "W' x = W x + (alpha/r) B (A x): the same outputs, with no extra layer or time at inference",
         size=FONT - 2)
    return fig


DIAGRAMS = {f.__name__: f for f in [
    text_to_embeddings, sliding_windows, bpe_pieces, embedding_lookup,
    attention_weighted_sum, qkv_projections, causal_mask, head_split,
    gpt_model, transformer_block, feed_forward, layer_norm, shortcut,
    training_loop, cross_entropy, kv_cache, cache_rebuild, ddp_allreduce, distributed_sampler,
    checkpoint_contents, gpt2_mapping, classification_head, instruction_batch, bpe_training, gpt2_encode,
    frozen_layers, alpaca_prompt, lora_update, lora_merge,
]}


def show(name):
    """Draw the diagram `name` (a key of DIAGRAMS) in the notebook."""
    import matplotlib.pyplot as plt

    if name not in DIAGRAMS:
        raise KeyError(f"No diagram {name!r}; the course draws {sorted(DIAGRAMS)}.")
    fig = DIAGRAMS[name]()
    fig.tight_layout()
    plt.show()


# --- Chapter 5b: modern open models ------------------------------------------------------------

def gpt2_vs_llama_block():
    fig, ax = _canvas(14, 7.2, "GPT-2's block and the Llama block (SmolLM2)")
    rows = [("x", "data"), ("norm", "module"), ("attention", "module"), ("+ x", "op"),
            ("norm", "module"), ("feed-forward", "module"), ("+", "op")]
    gpt2 = ["x (tokens + positions)", "LayerNorm", "MultiHeadAttention\n12 heads, with biases",
            "dropout, + shortcut", "LayerNorm", "Linear → GELU → Linear", "dropout, + shortcut"]
    llama = ["x (tokens only)", "RMSNorm", "GroupedQueryAttention\n9 query / 3 KV heads, RoPE",
             "+ shortcut", "RMSNorm", "SwiGLU: down(silu(gate) × up)", "+ shortcut"]
    changed = [True, True, True, True, True, True, True]
    for col, (x, labels) in enumerate([(3.4, gpt2), (10.6, llama)]):
        boxes = [box(ax, x, 6.2 - i * 0.92, label, kind if not (col and changed[i] and kind == "module") else "loss",
                     w=5.2, h=0.72, size=FONT - 2) for i, (label, (_, kind)) in enumerate(zip(labels, rows))]
        for a, b in zip(boxes, boxes[1:]):
            arrow(ax, a, b)
    note(ax, 3.4, 6.95, "GPT-2 (chapter 3)", size=FONT, color="#1a1a1a")
    note(ax, 10.6, 6.95, "Llama family (this chapter)", size=FONT, color="#1a1a1a")
    note(ax, 7.0, 0.25, "red: swapped parts; no biases, no dropout; positions enter as rotations inside attention",
         size=FONT - 2)
    return fig


def rope_rotation():
    from matplotlib.patches import Arc

    fig, ax = _canvas(13, 5.4, "RoPE: a pair (x₂ᵢ, x₂ᵢ₊₁) rotated by p·θᵢ at position p")
    cx, cy, r = 3.2, 2.5, 2.0
    ax.plot([cx - 2.5, cx + 2.5], [cy, cy], color="#bbbbbb", linewidth=1)
    ax.plot([cx, cx], [cy - 2.3, cy + 2.4], color="#bbbbbb", linewidth=1)
    base = 0.35
    colors = ["#2f6db3", "#2e7d32", "#c06a12", "#b3263e"]
    for p, color in zip(range(4), colors):
        angle = base + p * 0.55
        arrow(ax, (cx, cy), (cx + r * math.cos(angle), cy + r * math.sin(angle)), color=color)
        note(ax, cx + (r + 0.45) * math.cos(angle), cy + (r + 0.3) * math.sin(angle), f"p = {p}", color=color)
    ax.add_patch(Arc((cx, cy), 1.4, 1.4, theta1=math.degrees(base), theta2=math.degrees(base + 0.55), color="#444444"))
    note(ax, cx + 1.05, cy + 0.75, "θᵢ", size=FONT - 1, color="#444444")
    note(ax, 9.3, 4.3, "every position turns the pair by θᵢ more", size=FONT - 1, ha="center")
    note(ax, 9.3, 3.4, "query at m, key at n:  R(mθ)q · R(nθ)k = q · R((n − m)θ)k", size=FONT - 1)
    note(ax, 9.3, 2.5, "the score depends on the distance n − m only", size=FONT - 1)
    note(ax, 9.3, 1.4, "θᵢ = base^(−2i/64): pair 0 turns 1 radian per position,\npair 31 about 0.00014",
         size=FONT - 2)
    return fig


def gqa_heads():
    fig, ax = _canvas(14, 4.6, "Grouped-query attention: 9 query heads share 3 key/value heads")
    colors = ["data", "module", "op"]
    kv = [box(ax, 2.6 + g * 4.4, 1.0, f"K, V head {g}", colors[g], w=2.6, h=0.8) for g in range(3)]
    for h in range(9):
        g = h // 3
        q = box(ax, 1.1 + h * 1.48, 3.4, f"Q {h}", colors[g], w=1.2, h=0.75)
        arrow(ax, q, kv[g])
    note(ax, 7.0, 4.3, "W_query: 576 → 9 × 64", size=FONT - 2)
    note(ax, 7.0, 0.2, "W_key, W_value: 576 → 3 × 64; the KV cache keeps 3 heads per layer, not 9", size=FONT - 2)
    return fig


def kv_cache_bytes():
    fig, ax = _canvas(13, 4.2, "KV-cache bytes per token (float32): 2 × layers × KV heads × head_dim × 4")
    rows = [("GPT-2 124M\n12 layers × 12 heads", 73728, "note"),
            ("SmolLM2-135M\n30 layers × 3 KV heads", 46080, "data"),
            ("its MHA twin\n30 layers × 9 KV heads", 138240, "loss")]
    from matplotlib.patches import Rectangle

    for i, (label, size, kind) in enumerate(rows):
        y = 3.0 - i * 1.1
        note(ax, 1.6, y, label, size=FONT - 2)
        fill, edge = COLORS[kind]
        width = size / 138240 * 8.0
        ax.add_patch(Rectangle((3.3, y - 0.35), width, 0.7, facecolor=fill, edgecolor=edge, linewidth=1.6))
        note(ax, 3.3 + width + 0.15, y, f"{size / 1024:.0f} KiB", size=FONT - 2, ha="left")
    return fig


DIAGRAMS.update({f.__name__: f for f in [gpt2_vs_llama_block, rope_rotation, gqa_heads, kv_cache_bytes]})
