"""The masking session: encode images once, answer any number of prompts cheaply.

In the spirit of segment-anything's ``SamPredictor``: :meth:`Segmenter.encode_images` runs the heavy CLIP
vision tower once per image (and only up to the last layer the decoder reads),
:meth:`Segmenter.encode_prompts` runs the text tower once per unique prompt (cached), and
:meth:`Segmenter.decode` runs only the small decoder per (image, prompt) pair. :meth:`Segmenter.predict`
and :meth:`Segmenter.mask` chain the three over any number of images in bounded chunks.

The model is textmask's own CLIPSeg (:mod:`textmask.clipseg`; no transformers at run time). Numerically
the path is the reference transformers CLIPSeg forward (SDPA attention), module for module: the same
pixels (see :mod:`textmask.resize`), the same vision layers, the same decoder. Only work whose result is
never used is skipped.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .clipseg.layers import Attention, DecoderLayer, EncoderLayer, QuickGELU
from .constants import DEFAULT_MODEL
from .detail import blend_tiles, gate, scale_box, tile_boxes, tile_grid
from .edges import refine_levels
from .errors import (
    InputError,
    ModelLoadError,
    PromptError,
    TextmaskError,
    first_line,
    is_out_of_memory,
    out_of_memory_message,
)
from .images import ImageBatch, as_image_batch
from .matting import matte_levels
from .model import LoadedModel, load_model
from .postprocess import (
    REFINE_MATTE,
    MaskOptions,
    Target,
    TargetPlan,
    check_smoothing,
    combine,
    finish,
    finish_targets,
    normalize_minmax,
    normalize_seed,
    smooth_temporal,
)
from .prompts import (
    ExampleInput,
    PromptLike,
    as_prompt_list,
    blank_background,
    evaluate,
    is_single_prompt,
    leaves,
    plan,
)
from .resize import pil_resize

log = logging.getLogger("textmask")

ProgressCallback = Callable[[int, int], None]
"""Called as ``progress(done, total)`` after each chunk; it may raise to stop the run."""

DEFAULT_BATCH_SIZE = 8
_PROMPT_CACHE_SIZE = 4096
# Per decoder pass: at most this many (image, prompt) pairs, and this many full-size map values (~256 MB).
_MAX_PAIRS_PER_PASS = 64
_MAX_MAP_VALUES_PER_PASS = 64 * 1024 * 1024
_TorchOutOfMemory: type[BaseException] = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError


class OutOfMemoryError(TextmaskError, _TorchOutOfMemory):  # type: ignore[misc,valid-type]
    """The device ran out of memory even one image at a time.

    A subclass of ``torch.OutOfMemoryError`` too, so code that handles torch's (ComfyUI unloads its models
    and shows its out-of-memory tips) handles this one the same way.

    Attributes:
        device: the device that ran out.
        detail: the first line of the allocator's own message.
    """

    def __init__(self, message: str, device: str = "", detail: str = "") -> None:
        super().__init__(message)
        self.device = device
        self.detail = detail


def _call_module(layer: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    return layer(hidden)


def _quick_gelu_(values: torch.Tensor) -> torch.Tensor:
    """``x * sigmoid(1.702 x)`` (CLIP's activation) in place: the same elementwise ops as
    :class:`~textmask.clipseg.layers.QuickGELU` (and transformers'), so the same bits, with one large
    temporary instead of two."""
    factor = values.mul(1.702)
    factor.sigmoid_()
    return values.mul_(factor)


def _encoder_layer(layer: EncoderLayer, hidden: torch.Tensor) -> torch.Tensor:
    """One CLIP vision encoder layer, unmasked: the ops of :class:`~textmask.clipseg.layers.EncoderLayer`
    in the same order.

    The result is bit-identical to ``layer(hidden)`` (float addition and multiplication commute exactly),
    but residual sums and the activation are computed in place: on a CPU, every fresh tensor of tens of
    megabytes costs page faults (about 5% of the vision tower's time here). Linear layers are called
    as modules, so quantized replacements work unchanged.

    Args:
        hidden: ``[B, T, D]``.
    """
    hidden = _attention(layer.self_attn, layer.layer_norm1(hidden)).add_(hidden)
    mlp = layer.mlp
    inner = mlp.fc1(layer.layer_norm2(hidden))
    activation = mlp.activation_fn
    inner = _quick_gelu_(inner) if isinstance(activation, QuickGELU) else activation(inner)
    return mlp.fc2(inner).add_(hidden)


def _attention(attention: Attention, hidden: torch.Tensor) -> torch.Tensor:
    """:class:`~textmask.clipseg.layers.Attention` without a mask, op for op: ``[B, T, D]`` → ``[B, T, D]``,
    freeing the query, key and value before the output projection."""
    batch, tokens, _ = hidden.shape
    shape = (batch, tokens, attention.num_heads, attention.head_dim)
    query = attention.q_proj(hidden).view(shape).transpose(1, 2)
    key = attention.k_proj(hidden).view(shape).transpose(1, 2)
    value = attention.v_proj(hidden).view(shape).transpose(1, 2)
    attended = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, scale=attention.scale)
    del query, key, value
    return attention.out_proj(attended.transpose(1, 2).reshape(batch, tokens, -1).contiguous())


def _decoder_layer(layer: DecoderLayer, hidden: torch.Tensor) -> torch.Tensor:
    """One CLIPSeg decoder layer (post-norm), bit-identical to ``layer(hidden)``, residuals in place."""
    hidden = layer.layer_norm1(_attention(layer.self_attn, hidden).add_(hidden))
    mlp = layer.mlp
    inner = mlp.fc1(hidden)
    inner = torch.relu_(inner) if isinstance(mlp.activation_fn, torch.nn.ReLU) else mlp.activation_fn(inner)
    return layer.layer_norm2(mlp.fc2(inner).add_(hidden))


_OPENVINO_LOCK = threading.Lock()


def _openvino_tower(loaded: LoadedModel, prepare: Callable[[list[torch.Tensor]], torch.Tensor]) -> Any:
    """The loaded model's compiled OpenVINO vision graph, made once per :class:`LoadedModel` (read from textmask's
    cache, or built, quantized for int8, and saved there: :func:`textmask.openvino_backend.load_tower`)."""
    from .openvino_backend import load_tower

    with _OPENVINO_LOCK:
        if loaded.openvino_tower is None:
            loaded.openvino_tower = load_tower(
                loaded.model,
                # An adopted model without a name is "Type@id": the cache folder takes the type (the weights'
                # hash tells such models apart), so every process finds the same entry.
                name=loaded.folder.name if not loaded.adopted else Path(loaded.source.split("@", 1)[0]).name,
                folder=None if loaded.adopted else loaded.folder,
                precision=str(loaded.precision),
                size=tuple(loaded.preprocess.size),
                prepare=prepare,
                calibration=loaded.calibration,
                pixels=repr(loaded.preprocess),
            )
            log.info("OpenVINO vision tower ready: %s (%s)", loaded.openvino_tower, loaded.openvino_tower.timings)
        return loaded.openvino_tower


def _openvino_decoder(loaded: LoadedModel) -> Any:
    """The loaded model's compiled OpenVINO decoder (:func:`textmask.openvino_backend.load_decoder`), made once."""
    from .openvino_backend import load_decoder

    with _OPENVINO_LOCK:
        if loaded.openvino_decoder is None:
            height, width = loaded.preprocess.size
            patch = loaded.model.config.vision_config.patch_size
            tokens = 1 + (height // patch) * (width // patch)
            loaded.openvino_decoder = load_decoder(loaded.model, tokens)
        return loaded.openvino_decoder


@dataclass
class ImageFeatures:
    """What the decoder needs from a batch of images, computed once by :meth:`Segmenter.encode_images`.

    Attributes:
        reduced: one ``[B, T, R]`` tensor per decoder layer, in decoder order: the vision activations at
            ``extract_layers`` (deepest first) already passed through the decoder's ``reduces``
            projections, which do not depend on the prompt (T = 1 + (352/16)² tokens, R = reduce_dim).
        sizes: each image's original ``(height, width)``.
    """

    reduced: tuple[torch.Tensor, ...]
    sizes: list[tuple[int, int]]

    def __len__(self) -> int:
        return len(self.sizes)

    def select(self, indices: Sequence[int]) -> ImageFeatures:
        """The features of these images, in this order."""
        chosen = list(indices)
        return ImageFeatures(reduced=tuple(r[chosen] for r in self.reduced), sizes=[self.sizes[i] for i in chosen])

    @staticmethod
    def concatenate(parts: Sequence[ImageFeatures]) -> ImageFeatures:
        """The features of several batches, one after the other."""
        depth = len(parts[0].reduced)
        return ImageFeatures(
            reduced=tuple(torch.cat([p.reduced[i] for p in parts]) for i in range(depth)),
            sizes=[size for p in parts for size in p.sizes],
        )


class Segmenter:
    """A loaded CLIPSeg model with everything needed to mask images, on one device and dtype.

    Get one with :func:`textmask.load`; it is cached per (model, device, dtype), and so is its prompt
    embedding cache.
    """

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded
        self.clipseg = loaded.model  # textmask's CLIPSeg modules: what runs
        # What the session stands for: the caller's own model when session_from_hf uses it as is (the CLIPSeg
        # above holds its very parameters), else the CLIPSeg itself.
        self.model = loaded.shares_parameters_of if loaded.shares_parameters_of is not None else loaded.model
        self.tokenizer = loaded.tokenizer
        self.preprocess_config = loaded.preprocess
        self.device = loaded.device
        self.dtype = loaded.dtype
        config = self.clipseg.config
        self.extract_layers: list[int] = list(config.extract_layers)
        self.conditional_layer: int = int(config.conditional_layer)
        self.max_prompt_tokens: int = int(config.text_config.max_position_embeddings)
        vision = self.clipseg.clip.vision_model
        self._vision_layers = list(vision.encoder.layers[: config.vision_layers_for_masks])
        self._run_layer = _encoder_layer
        self._run_decoder_layer = _decoder_layer
        self.backend: str = getattr(loaded, "backend", "torch")
        self._openvino: Any = None  # backend="openvino": the compiled vision graph (textmask.openvino_backend)
        self.precision_check: Any = None  # textmask.precision.PrecisionCheck: how this precision agrees with float32
        self._position_cache: dict[tuple[int, int], torch.Tensor] = {}
        self._pixel_table = self._level_to_pixel_table().to(self.device)
        if getattr(loaded, "fast", False):  # rearranged (and maybe int8) copies; the model stays as it is
            from .fast import fast_vision_layers

            plans = None
            if loaded.quantize == "int8":  # smoothing and float-kept layers, calibrated once per model (cached)
                from .precision import int8_plans

                plans = int8_plans(self)
            self._vision_layers = fast_vision_layers(
                self._vision_layers, self.dtype, self.device, loaded.quantize, plans
            )
            self._run_layer = _call_module
        self._prompt_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._example_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        # Padding colour for cropped examples: the 8-bit level whose normalized value is nearest 0 (the mean).
        self._example_fill = self._pixel_table.abs().argmin(dim=1).to(torch.uint8).cpu()
        self._openvino_decoder: Any = None
        if self.backend == "openvino":
            self._openvino = _openvino_tower(loaded, self.preprocess)
            self._openvino_decoder = _openvino_decoder(loaded)

    def __repr__(self) -> str:
        precision = self.precision_name.replace("-", " ")  # "float32", "fast int8", "openvino bfloat16"
        return f"Segmenter(source={self.loaded.source!r}, device={self.device}, precision={precision})"

    @property
    def precision_name(self) -> str:
        """What runs the vision tower, in words (:attr:`textmask.model.LoadedModel.precision_name`)."""
        return self.loaded.precision_name

    # ------------------------------------------------------------------------------ preprocessing
    def _level_to_pixel_table(self) -> torch.Tensor:
        """``[3, 256]`` float32: the pixel value of each 8-bit level per channel.

        Computed with the processor's own arithmetic (scale in float64, cast to float32, then
        ``(x - mean) / std`` in float32; for torchvision processors, ``(x - mean/scale) / (std/scale)`` in
        float32), so a lookup gives bit-identical pixel values.
        """
        config = self.preprocess_config
        if config.backend == "torchvision":
            return _torchvision_pixel_table(config)
        levels = np.arange(256, dtype=np.float64)
        values = (levels * config.rescale_factor if config.do_rescale else levels).astype(np.float32)
        values = np.broadcast_to(values, (3, 256))
        if config.do_normalize:
            mean = np.asarray(config.mean, dtype=np.float32)[:, None]
            std = np.asarray(config.std, dtype=np.float32)[:, None]
            values = (values - mean) / std
        return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))

    def preprocess(self, levels: Sequence[torch.Tensor]) -> torch.Tensor:
        """8-bit images → the model's pixel values, batched on the model's device.

        Args:
            levels: ``n`` tensors ``[3, H, W]`` uint8 (sizes may differ).

        Returns:
            ``[n, 3, S, S]`` in the model dtype (S = 352): resized exactly as CLIPSeg's processor
            resizes (Pillow's filter in 8 bits), scaled by 1/255 and normalized with the model's mean/std.
        """
        config = self.preprocess_config
        height, width = config.size
        resized = torch.empty((len(levels), 3, height, width), dtype=torch.uint8, device=self.device)
        by_size: dict[tuple[int, int], list[int]] = {}
        for index, image in enumerate(levels):
            by_size.setdefault(tuple(image.shape[-2:]), []).append(index)
        for size, indices in by_size.items():
            group = torch.stack([levels[i] for i in indices]).to(self.device, non_blocking=True)
            if config.do_resize and config.backend == "torchvision":
                group = _torchvision_resize(group, (height, width), config.resample)
            elif config.do_resize and size != (height, width):
                group = pil_resize(group, (height, width), config.resample)
            elif size != (height, width):
                raise ValueError(f"the model needs {height}×{width} images, got {size} and do_resize=False")
            resized[torch.tensor(indices, device=self.device)] = group
        channel_offset = torch.arange(0, 3 * 256, 256, device=self.device).view(1, 3, 1, 1)
        pixels = self._pixel_table.view(-1)[resized.long() + channel_offset]
        return pixels.to(self.dtype)

    # ------------------------------------------------------------------------------------ encoders
    @torch.inference_mode()
    def encode_pixels(self, pixel_values: torch.Tensor, sizes: list[tuple[int, int]]) -> ImageFeatures:
        """Run the vision tower up to the last extract layer and the decoder's prompt-free projections.

        Args:
            pixel_values: ``[B, 3, S, S]`` from :meth:`preprocess`.
            sizes: each image's original ``(height, width)``.
        """
        if self._openvino is not None:
            return ImageFeatures(reduced=self._openvino(pixel_values), sizes=list(sizes))
        vision = self.clipseg.clip.vision_model
        hidden = vision.pre_layrnorm(self._embed(pixel_values))
        activations: dict[int, torch.Tensor] = {}
        for index, layer in enumerate(self._vision_layers):
            hidden = self._run_layer(layer, hidden)
            if index in self.extract_layers:
                activations[index] = hidden
        decoder = self.clipseg.decoder
        ordered = [activations[i] for i in self.extract_layers][::-1]
        reduced = tuple(reduce(activation) for reduce, activation in zip(decoder.reduces, ordered))
        return ImageFeatures(reduced=reduced, sizes=list(sizes))

    def _embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[B, 3, S, S]`` → patch + class embeddings with position embeddings ``[B, T, D]``.

        The same ops as :class:`~textmask.clipseg.towers.VisionEmbeddings` (transformers' with
        ``interpolate_pos_encoding=True``), except that the interpolated position table (bicubic, per input
        size) is computed once and kept.
        """
        embeddings = self.clipseg.clip.vision_model.embeddings
        _, _, height, width = pixel_values.shape
        hidden = embeddings.patches(pixel_values)
        positions = self._position_cache.get((height, width))
        if positions is None:
            positions = embeddings.position_table(height, width)
            self._position_cache[(height, width)] = positions
        return hidden + positions

    def encode_images(self, images: Any, batch_size: int | None = None) -> ImageFeatures:
        """Encode images once, for any number of later :meth:`decode` calls.

        Args:
            images: anything :func:`textmask.images.as_image_batch` accepts.
            batch_size: images per forward pass (memory bound), default 8.
        """
        batch = as_image_batch(images)
        step = max(1, int(batch_size or DEFAULT_BATCH_SIZE))
        parts: list[ImageFeatures] = []
        for start in range(0, len(batch), step):
            levels = batch.levels(start, min(start + step, len(batch)))
            parts.append(self.encode_pixels(self.preprocess(levels), [tuple(x.shape[-2:]) for x in levels]))
        if not parts:
            raise InputError("images: the batch is empty; there is nothing to encode")
        return ImageFeatures.concatenate(parts)

    @torch.inference_mode()
    def encode_prompts(self, prompts: PromptLike | Sequence[PromptLike], name: str = "prompts") -> torch.Tensor:
        """Prompts → conditional embeddings ``[P, D]`` (model dtype, on the model's device).

        A prompt is text (``str`` / :class:`~textmask.prompts.TextPrompt`), an example image
        (:class:`~textmask.prompts.ImagePrompt`, or a bare PIL image / ``Path`` / one-image tensor), or a
        :class:`~textmask.prompts.Blend` (weighted mean of its items' embeddings). Each unique text runs
        through the text tower once per session and each unique example (by a content hash of its
        prepared pixels, mask and settings) through the image tower once; repeats come from caches.

        Texts longer than CLIP's 77 tokens are truncated with a warning. An empty text is allowed (the
        seed node's default text is "") but warned about: CLIPSeg then masks whatever its empty-text
        embedding matches, which is rarely what anyone wants.

        Args:
            prompts: one prompt or a list of P prompts.
            name: how to call the input in error messages.

        Raises:
            PromptError: an unsupported prompt, an unreadable example image or mask, bad weights.
        """
        items = as_prompt_list(prompts, name)
        nodes = [plan(item, f"{name}[{index}]", self._example_fill) for index, item in enumerate(items)]
        found: dict[str, torch.Tensor] = {}
        texts: list[str] = []
        examples: dict[str, ExampleInput] = {}
        for node in nodes:
            for leaf in leaves(node):
                if leaf.text is not None:
                    texts.append(leaf.text)
                elif leaf.example is not None:
                    examples.setdefault(leaf.example.key, leaf.example)
        missing = list(dict.fromkeys(t for t in texts if t not in self._prompt_cache))
        fresh = self._encode_texts(missing) if missing else {}
        for text in dict.fromkeys(texts):
            if text in fresh:
                found["text:" + text] = fresh[text]
            else:
                self._prompt_cache.move_to_end(text)
                found["text:" + text] = self._prompt_cache[text]
        while len(self._prompt_cache) > _PROMPT_CACHE_SIZE:  # trimmed only now: this call's texts are in `found`
            self._prompt_cache.popitem(last=False)
        new = [example for key, example in examples.items() if key not in self._example_cache]
        if new:
            self._encode_examples(new)
        for key in examples:
            self._example_cache.move_to_end(key)
            found["image:" + key] = self._example_cache[key]
        while len(self._example_cache) > _PROMPT_CACHE_SIZE:
            self._example_cache.popitem(last=False)

        def lookup(leaf: Any) -> torch.Tensor:
            return found["text:" + leaf.text] if leaf.text is not None else found["image:" + leaf.example.key]

        return torch.stack([evaluate(node, lookup) for node in nodes])

    def _encode_examples(self, examples: list[ExampleInput]) -> None:
        """Run CLIP's image tower (+ visual projection) on prepared examples; cache by content key.

        The pixels are :meth:`preprocess`'s (the processor's ``visual_prompt`` path); masked examples then
        get the paper's background treatment (:func:`textmask.prompts.blank_background`). Each example
        goes through the tower on its own, so its cached embedding never depends on which other examples
        shared the call (batched matmuls differ in the last bits); examples are few, so this costs little.
        """
        step = DEFAULT_BATCH_SIZE
        for start in range(0, len(examples), step):
            chunk = examples[start : start + step]
            pixels = self.preprocess([example.levels for example in chunk])
            for index, example in enumerate(chunk):
                values = pixels[index : index + 1]
                if example.mask is not None:
                    values = blank_background(values[0], example.mask, example.background, example.blur)[None]
                embedding = self.clipseg.get_conditional_embeddings(batch_size=1, conditional_pixel_values=values)
                self._example_cache[example.key] = embedding[0]

    def _encode_texts(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Run the text tower on ``texts`` (unique), one text per pass; cache and return them.

        The caller trims the cache afterwards, so a call with more unique texts than the cache holds still
        gets every embedding.
        """
        limit = self.max_prompt_tokens
        for text in texts:
            if not text.strip():
                warnings.warn(
                    "empty prompt: CLIPSeg will mask whatever its empty-text embedding matches; "
                    "describe what to mask instead",
                    stacklevel=4,
                )
            length = len(self.tokenizer(text)["input_ids"])
            if length > limit:
                warnings.warn(
                    f"prompt {text[:40]!r}... has {length} tokens; CLIP reads at most {limit}, the rest is ignored",
                    stacklevel=4,
                )
        # One text per forward: in a padded batch the embedding's last bits depend on the other texts (matmul
        # shapes), and then a mask would depend on what was asked before. The text tower is cheap; once per text.
        encoded: dict[str, torch.Tensor] = {}
        for text in texts:
            tokens = self.tokenizer([text], truncation=True, max_length=limit, return_tensors="pt")
            embedding = self.clipseg.get_conditional_embeddings(
                batch_size=1,
                input_ids=tokens["input_ids"].to(self.device),
                attention_mask=tokens["attention_mask"].to(self.device),
            )
            self._prompt_cache[text] = encoded[text] = embedding[0]
        return encoded

    # ------------------------------------------------------------------------------------- decoder
    @torch.inference_mode()
    def decode(self, features: ImageFeatures, embeddings: torch.Tensor) -> torch.Tensor:
        """Run the decoder for every (image, prompt) pair.

        Args:
            features: from :meth:`encode_images` / :meth:`encode_pixels`, B images.
            embeddings: ``[P, D]`` from :meth:`encode_prompts`.

        Returns:
            logits ``[B, P, S, S]`` float32 (S = 352).
        """
        decoder = self.clipseg.decoder
        batch, prompts = len(features), embeddings.shape[0]
        if prompts > 1:
            # One prompt per pass: a prompt's logits must not depend on which other prompts share the call (the
            # targets of one mask call against separate calls; negatives added or not). In one batch of B × P rows
            # the matmuls' kernels (chosen by the row count on some CPUs) would change the last bits with P.
            return torch.cat([self.decode(features, embeddings[index : index + 1]) for index in range(prompts)], 1)
        embeddings = embeddings.to(device=self.device, dtype=self.dtype)
        if self._openvino_decoder is not None:  # backend="openvino": the decoder layers run there too
            return self._openvino_decoder(features.reduced, decoder.film_mul(embeddings), decoder.film_add(embeddings))
        film_mul = decoder.film_mul(embeddings)[None, :, None, :]  # [1, P, 1, R]
        film_add = decoder.film_add(embeddings)[None, :, None, :]
        output: torch.Tensor | None = None
        expanded = False
        for index, (reduced, layer) in enumerate(zip(features.reduced, decoder.layers)):
            if expanded:
                reduced = reduced.repeat_interleave(prompts, dim=0)
            output = reduced if output is None else reduced + output
            if index == self.conditional_layer:
                tokens, width = output.shape[-2:]
                output = output[:, None] * film_mul + film_add  # [B, P, T, R]
                output = output.reshape(batch * prompts, tokens, width)
                expanded = True
            output = self._run_decoder_layer(layer, output)
        assert output is not None
        if not expanded:  # conditional layer beyond the decoder depth: never conditioned (matches HF)
            output = output.repeat_interleave(prompts, dim=0)
        pairs, tokens, width = output.shape
        side = round((tokens - 1) ** 0.5)
        # One (image, prompt) pair at a time, each cut from the [pairs, T, R] tokens alone (a [1, R, S, S] view with
        # the same strides as transformers' at batch 1): batched convolutions give results whose last bits depend on
        # the batch size, and so does a slice's layout (oneDNN picks its algorithm by the strides, the batch's
        # included), and a mask must not depend on which images shared its chunk (the CLI, the Ray actors and
        # resumed runs batch differently). These layers are a few percent of the decoder's small cost.
        upsample = decoder.transposed_convolution
        logits = torch.cat(
            [
                upsample(output[pair : pair + 1, 1:, :].transpose(1, 2).reshape(1, width, side, side))
                for pair in range(pairs)
            ]
        ).squeeze(1)
        return logits.reshape(batch, prompts, *logits.shape[-2:]).float()

    # ---------------------------------------------------------------------------------- upsampling
    @staticmethod
    def probabilities(logits: torch.Tensor, size: tuple[int, int], normalize: str = "none") -> torch.Tensor:
        """Logits at model resolution → probabilities at ``size``.

        Args:
            logits: ``[B, P, S, S]`` float32.
            size: output ``(height, width)``.
            normalize: ``"none"``/``"minmax"``: bilinear upsampling of the logits, then sigmoid (and the
                min-max stretch). ``"seed"``: the seed node's path, reproduced exactly: sigmoid at S×S,
                ``(p - min) / max``, 8-bit truncation, Pillow's bicubic resize, /255.

        Returns:
            ``[B, P, height, width]`` float32 in [0, 1].
        """
        if normalize == "seed":
            levels = (normalize_seed(torch.sigmoid(logits)) * 255.0).clamp(0, 255).to(torch.uint8)
            return pil_resize(levels, size, "bicubic").to(torch.float32) / 255.0
        if tuple(logits.shape[-2:]) != tuple(size):
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        probs = torch.sigmoid(logits)
        return normalize_minmax(probs) if normalize == "minmax" else probs

    # ------------------------------------------------------------------------------------ pipeline
    def predict(
        self,
        images: Any,
        prompts: PromptLike | Sequence[PromptLike],
        *,
        normalize: str = "none",
        detail: Any = "off",
        output_size: tuple[int, int] | None = None,
        batch_size: int | None = None,
        progress: ProgressCallback | None = None,
        output_device: str | torch.device = "cpu",
    ) -> torch.Tensor | list[torch.Tensor]:
        """Per-prompt probability maps at each image's own size.

        Args:
            images: one image (tensor ``[H, W, C]``, array, PIL, path), a batch ``[B, H, W, C]``, or a list.
            prompts: one prompt (the prompt axis is dropped) or a list of P prompts; text, example
                images (:class:`~textmask.prompts.ImagePrompt`) or blends (see :meth:`encode_prompts`).
            normalize: ``"none"``, ``"minmax"`` or ``"seed"`` (see :meth:`probabilities`).
            detail: detail mode, ``"off"`` (default), ``"auto"`` or ``(rows, columns)`` of tiles (see
                :class:`~textmask.postprocess.MaskOptions` and :mod:`textmask.detail`); each tile costs one more
                vision pass per image.
            output_size: ``(height, width)`` for every output instead of each image's own size.
            batch_size: images per forward pass; memory stays bounded by it.
            progress: ``progress(done, total)`` after each chunk; may raise to stop.
            output_device: where results are returned (default CPU).

        Returns:
            float32 in [0, 1]: ``[B, P, H, W]`` for a batch tensor/array (or with ``output_size``), a list
            of ``[P, H, W]`` for a list input, ``[P, H, W]`` for a single image; without the P axis when
            ``prompts`` is a single prompt.
        """
        options = MaskOptions(normalize=normalize, detail=detail)
        embeddings = self.encode_prompts(as_prompt_list(prompts, "prompts"))
        squeeze = is_single_prompt(prompts)
        return self._run(images, embeddings, None, options, output_size, batch_size, progress, output_device, squeeze)

    def mask(
        self,
        images: Any,
        prompts: PromptLike | Sequence[PromptLike] | None = None,
        *,
        targets: Sequence[Any] | None = None,
        negative_prompts: PromptLike | Sequence[PromptLike] = (),
        options: MaskOptions | None = None,
        output_size: tuple[int, int] | None = None,
        batch_size: int | None = None,
        progress: ProgressCallback | None = None,
        output_device: str | torch.device = "cpu",
        **option_overrides: Any,
    ) -> torch.Tensor | list[torch.Tensor]:
        """Finished masks: each target's prompts combined, negatives subtracted, post-processing applied.

        Every image is encoded once and every unique prompt decoded once, whatever the number of targets.

        Args:
            images: as for :meth:`predict`.
            prompts: one or more prompts (text, example images, blends) making one mask per image, combined
                with ``options.combine``.
            targets: instead of ``prompts``, several masks per image: each a :class:`~textmask.postprocess.Target`
                (prompts and combine mode), a list of prompts (combined with ``options.combine``) or one prompt.
            negative_prompts: prompts (of any kind) whose maps are subtracted from every mask.
            options: a :class:`~textmask.postprocess.MaskOptions`; keyword overrides such as
                ``threshold=0.4, blur=2, grow=4, invert=True, normalize="minmax"`` replace its fields.
            output_size, batch_size, progress, output_device: as for :meth:`predict`.

        Returns:
            float32 in [0, 1]. With ``prompts``: ``[B, H, W]`` for a batch tensor/array (or with
            ``output_size``), a list of ``[H, W]`` for a list input, ``[H, W]`` for a single image. With
            ``targets``: the same with a target axis, ``[B, T, H, W]``, ``[T, H, W]``.
        """
        options = MaskOptions.from_kwargs(options, **option_overrides)
        plan, embeddings = self._plan(prompts, targets, negative_prompts, options)
        squeeze = targets is None
        return self._run(images, embeddings, plan, options, output_size, batch_size, progress, output_device, squeeze)

    def stream(
        self,
        targets: Sequence[Any],
        *,
        negative_prompts: PromptLike | Sequence[PromptLike] = (),
        options: MaskOptions | None = None,
        smoothing: float = 0.0,
        batch_size: int | None = None,
        stabilize: float = 0.0,
        **option_overrides: Any,
    ) -> MaskStream:
        """A callable for consecutive frames of one video: ``stream(frames [B, H, W, C]) → [B, T, H, W]``.

        With ``smoothing`` in [0, 1), each prompt's probability map is averaged over time
        (:func:`~textmask.postprocess.smooth_temporal`) before the masks are finished, carried across calls, so a
        video masked chunk by chunk equals the same video masked in one piece.

        Args:
            targets, negative_prompts, options, option_overrides: as for :meth:`mask` (with ``targets``).
            smoothing: temporal smoothing strength in [0, 1); 0 is off.
            batch_size: frames per forward pass.
            stabilize: motion-following temporal consistency (:func:`textmask.stabilize`) in [0, 1): the most
                each pixel keeps of the previous frame's maps warped along the optical flow; 0 is off. Not
                with ``smoothing``. Needs opencv-python-headless.
        """
        from .stabilization import Stabilizer, check_strength

        options = MaskOptions.from_kwargs(options, **option_overrides)
        stabilizer = Stabilizer(check_strength(stabilize)) if stabilize else None
        if stabilizer is not None and smoothing:
            raise ValueError("stream(): give smoothing or stabilize, not both")
        plan, embeddings = self._plan(None, targets, negative_prompts, options)
        stream = MaskStream(self, plan, embeddings, options, check_smoothing(smoothing), batch_size)
        stream.stabilizer = stabilizer
        return stream

    def _plan(
        self,
        prompts: Any,
        targets: Sequence[Any] | None,
        negative_prompts: Any,
        options: MaskOptions,
    ) -> tuple[TargetPlan, torch.Tensor]:
        """The targets' unique prompts and their embeddings ``[P, D]`` (errors name the argument at fault)."""
        if targets is None:
            if prompts is None:
                raise PromptError("prompts: give at least one prompt (or several masks with targets=[...])")
            named = [(Target(tuple(as_prompt_list(prompts, "prompts")), options.combine), "prompts")]
        else:
            if prompts is not None:
                raise TypeError("mask(): give prompts or targets, not both")
            named = as_targets(targets, options.combine)
        negative: list[Any] = []
        if is_single_prompt(negative_prompts) or len(negative_prompts):
            negative = as_prompt_list(negative_prompts, "negative_prompts")
        plan = TargetPlan.build([target for target, _ in named], negative)
        found: dict[Any, torch.Tensor] = {}
        for items, name in [*((list(t.prompts), n) for t, n in named), (negative, "negative_prompts")]:
            if items:
                for prompt, embedding in zip(items, self.encode_prompts(items, name)):
                    found.setdefault(prompt, embedding)
        return plan, torch.stack([found[prompt] for prompt in plan.prompts])

    def _run(
        self,
        images: Any,
        embeddings: torch.Tensor,
        plan: TargetPlan | None,
        options: MaskOptions,
        output_size: tuple[int, int] | None,
        batch_size: int | None,
        progress: ProgressCallback | None,
        output_device: str | torch.device,
        squeeze: bool,
    ) -> torch.Tensor | list[torch.Tensor]:
        """Images in chunks → per image ``[T, H, W]`` finished masks (``plan``) or ``[P, H, W]`` maps (None),
        into a pre-allocated batch when every output has one size."""
        batch = as_image_batch(images)
        work = _Work(embeddings, plan, options, _check_size(output_size))
        total = len(batch)
        fixed_size = work.output_size or batch.uniform_size
        stacked = batch.stacked is not None or work.output_size is not None
        planes = embeddings.shape[0] if plan is None else len(plan.targets)
        results: torch.Tensor | list[torch.Tensor] = []
        if stacked and fixed_size is not None:
            shape = (total, *(() if squeeze else (planes,)), *fixed_size)
            results = torch.empty(shape, dtype=torch.float32, device=output_device)
        for index, values in self._chunked(batch, [work] * total, batch_size, progress):
            values = (values[0] if squeeze else values).to(output_device)
            if isinstance(results, torch.Tensor):
                results[index] = values
            else:
                results.append(values)
        if not batch.batched:
            return results[0]
        return results

    def mask_requests(
        self, requests: Sequence[MaskRequest], batch_size: int | None = None, output_device: str | torch.device = "cpu"
    ) -> list[torch.Tensor]:
        """Several independent requests (each its own image, targets, negatives and options) in one engine call:
        the vision tower runs over all the images in shared chunks, each request's prompts are decoded for its
        own image only, and prompt embeddings come from the session's cache. What a server's micro-batcher
        needs; each result equals :meth:`mask` of that request alone.

        Returns:
            per request, ``[T, H, W]`` float32 in [0, 1] (T = its number of targets).

        Raises:
            PromptError, InputError: naming ``requests[i]`` and the field at fault.
        """
        works, images = [], []
        for index, request in enumerate(requests):
            options = MaskOptions.from_kwargs(request.options)
            try:
                plan, embeddings = self._plan(request.prompts, request.targets, request.negative_prompts, options)
            except (PromptError, InputError, ValueError) as exc:
                raise type(exc)(f"requests[{index}]: {exc}") from None
            works.append(_Work(embeddings, plan, options, _check_size(request.output_size)))
            images.append(request.image)
        batch = as_image_batch(images, "requests")
        results: list[torch.Tensor] = [torch.empty(0)] * len(works)
        for index, values in self._chunked(batch, works, batch_size, None):
            results[index] = values.to(output_device)
        return results

    def _chunked(
        self,
        batch: ImageBatch,
        works: Sequence[_Work],
        batch_size: int | None,
        progress: ProgressCallback | None,
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """``(image index, result)`` for every image, computed chunk by chunk; out of memory is retried with
        halved chunks, down to one image (then :class:`OutOfMemoryError`)."""
        total = len(batch)
        step = max(1, int(batch_size or DEFAULT_BATCH_SIZE))
        start = 0
        while start < total:
            stop = min(start + step, total)
            failure: str | None = None
            try:
                chunk = self._masks_for_chunk(batch, start, stop, works[start:stop])
            except (RuntimeError, MemoryError) as error:
                if not is_out_of_memory(error):
                    raise
                failure = first_line(error)
            if failure is not None:  # outside the except block, so the failed chunk's tensors can be freed
                self._release_memory()
                if step == 1:
                    which = batch.name if not batch.batched else f"{batch.name}[{start}]"
                    raise OutOfMemoryError(
                        out_of_memory_message(which, self.device, failure), device=str(self.device), detail=failure
                    ) from None
                step = max(1, step // 2)
                log.warning("out of memory on %s; retrying with batch size %d", self.device, step)
                continue
            for offset, values in enumerate(chunk):
                yield start + offset, values
            start = stop
            if progress is not None:
                progress(start, total)

    def _release_memory(self) -> None:
        """Give freed blocks back after an out-of-memory error, so the retry starts from a clean pool."""
        import gc

        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        elif self.device.type == "mps" and hasattr(torch, "mps"):
            torch.mps.empty_cache()

    def _prompts_per_pass(self, images: int, pixels_per_image: int, prompts: int) -> int:
        """How many prompts one decoder pass takes, so that logits and full-size maps stay bounded."""
        by_pairs = _MAX_PAIRS_PER_PASS // max(1, images)
        by_pixels = _MAX_MAP_VALUES_PER_PASS // max(1, images * pixels_per_image)
        return max(1, min(prompts, by_pairs, by_pixels))

    @torch.inference_mode()
    def _masks_for_chunk(self, batch: ImageBatch, start: int, stop: int, works: Sequence[_Work]) -> list[torch.Tensor]:
        """Images ``start..stop``, ``works[i]`` saying what to make of image i: finished masks ``[T, H, W]``
        (a plan) or maps ``[P, H, W]``, one per image.

        The vision tower runs once for the chunk; the decoder then runs, for the images that share a work and
        an output size, over the prompts in groups small enough to bound memory whatever the number of
        prompts, and with a plan each group is folded into running per-target unions/intersections instead of
        keeping every prompt's map.
        """
        levels = batch.levels(start, stop)
        sizes = [tuple(image.shape[-2:]) for image in levels]
        features = self.encode_pixels(self.preprocess(levels), sizes)
        targets = [work.output_size or size for work, size in zip(works, sizes)]
        tiles = self._encode_tiles(levels, works)
        out: list[torch.Tensor | None] = [None] * len(levels)
        for size, work_id in dict.fromkeys((target, id(work)) for target, work in zip(targets, works)):
            indices = [i for i, (t, w) in enumerate(zip(targets, works)) if t == size and id(w) == work_id]
            work = works[indices[0]]
            embeddings, plan, options = work.embeddings, work.plan, work.options
            group_features = features.select(indices)
            passes = len(indices) + sum(len(tiles.boxes[i]) for i in indices)  # decoder pairs per prompt
            step = self._prompts_per_pass(passes, size[0] * size[1], embeddings.shape[0])
            folds = [_TargetFold(plan) if plan is not None else None for _ in indices]
            maps: list[list[torch.Tensor]] = [[] for _ in indices]
            for first in range(0, embeddings.shape[0], step):
                group = embeddings[first : first + step]
                logits = self.decode(group_features, group)  # [k, g, S, S]
                tile_logits = self.decode(tiles.features.select(tiles.of(indices)), group) if tiles else None
                # Image by image from here on (each step still batched over prompts and pixels): elementwise
                # kernels treat a tensor's vector tail differently from its body, so a batched upsampling would
                # make a mask's last bits depend on which images shared its chunk.
                tile_offset = 0
                for k, i in enumerate(indices):
                    if options.detail == "off":
                        probs = self.probabilities(logits[k : k + 1], size, options.normalize)[0]  # [g, H, W]
                    else:
                        count = len(tiles.boxes[i])
                        own = tile_logits[tile_offset : tile_offset + count]  # type: ignore[index]
                        tile_offset += count
                        probs = self._detail_probabilities(logits[k], own, tiles.boxes[i], sizes[i], size, options)
                    fold = folds[k]
                    if fold is None:
                        maps[k].append(probs)
                    else:
                        fold.add(probs, first)
                del logits, tile_logits
            for k, i in enumerate(indices):
                fold = folds[k]
                if fold is None:
                    out[i] = torch.cat(maps[k])
                else:
                    combined, negative = fold.result()
                    refine = self._refiner(levels[i], size, options, tiles.boxes[i])
                    out[i] = finish(combined, negative, options, refine)
        return out  # type: ignore[return-value]

    def _refiner(
        self,
        image: torch.Tensor,
        size: tuple[int, int],
        options: MaskOptions,
        tile_boxes: Sequence[tuple[int, int, int, int]] = (),
    ) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """``masks [T, H, W] → refined`` for one image (its levels ``[3, h, w]`` uint8, resized exactly to the
        masks' size when that differs), or None when ``options`` does not ask for refinement. The coarse grid
        refine assumes is CLIPSeg's patch grid over the image (finer in detail mode: over each tile)."""
        if options.refine is None:
            return None
        rows, cols = self.patch_grid
        if tile_boxes:
            top, bottom, left, right = tile_boxes[0]
            rows = round(rows * image.shape[-2] / (bottom - top))
            cols = round(cols * image.shape[-1] / (right - left))

        def apply(masks: torch.Tensor) -> torch.Tensor:
            guide = image if tuple(image.shape[-2:]) == tuple(size) else pil_resize(image, size, "bilinear")
            guide = guide.to(masks.device)[None].expand(masks.shape[0], -1, -1, -1)
            if options.refine == REFINE_MATTE:
                return matte_levels(guide, masks, grid=(rows, cols), colours=False).alpha
            return refine_levels(guide, masks, options.refine, grid=(rows, cols))

        return apply

    @property
    def patch_grid(self) -> tuple[int, int]:
        """CLIPSeg's coarse grid: the model input's size in patches (22 × 22 for 352 px and 16 px patches)."""
        patch = int(self.clipseg.config.vision_config.patch_size)
        height, width = self.preprocess_config.size
        return max(1, height // patch), max(1, width // patch)

    def _encode_tiles(self, levels: Sequence[torch.Tensor], works: Sequence[_Work]) -> _Tiles:
        """The detail-mode tiles of the images whose work asks for them, through the vision tower in groups of
        at most as many tiles as the chunk has images (memory stays bounded by the batch size)."""
        boxes: list[list[tuple[int, int, int, int]]] = []
        crops: list[torch.Tensor] = []
        for image, work in zip(levels, works):
            detail = work.options.detail
            if detail == "off":
                boxes.append([])
                continue
            height, width = image.shape[-2:]
            boxes.append(tile_boxes(height, width, tile_grid(height, width, detail)))
            crops.extend(image[:, top:bottom, left:right] for top, bottom, left, right in boxes[-1])
        if not crops:
            return _Tiles(boxes, None)
        step = max(1, len(levels))
        parts = []
        for at in range(0, len(crops), step):
            group = crops[at : at + step]
            parts.append(self.encode_pixels(self.preprocess(group), [tuple(c.shape[-2:]) for c in group]))
        return _Tiles(boxes, ImageFeatures.concatenate(parts))

    def _detail_probabilities(
        self,
        global_logits: torch.Tensor,
        tile_logits: torch.Tensor,
        boxes: list[tuple[int, int, int, int]],
        image_size: tuple[int, int],
        size: tuple[int, int],
        options: MaskOptions,
    ) -> torch.Tensor:
        """Detail mode for one image: ``[g, H, W]`` probabilities from its global logits ``[g, S, S]`` and its
        tiles' ``[n, g, S, S]``: the tiles blended (:func:`textmask.detail.blend_tiles`) and gated by the global
        map (:func:`textmask.detail.gate`), then normalized as ``options.normalize`` says."""
        global_map = self.probabilities(global_logits[None], size, "none")[0]
        placed = [scale_box(box, image_size, size) for box in boxes]
        tile_maps = [
            self.probabilities(tile_logits[j : j + 1], (bottom - top, right - left), "none")[0]
            for j, (top, bottom, left, right) in enumerate(placed)
        ]
        probs = gate(blend_tiles(tile_maps, placed, size), global_map)
        return normalize_minmax(probs) if options.normalize == "minmax" else probs


@dataclass
class _Tiles:
    """Detail-mode tiles of a chunk: per image its boxes (none when its work has detail off), and the features of
    all tiles, image after image."""

    boxes: list[list[tuple[int, int, int, int]]]
    features: ImageFeatures | None

    def __bool__(self) -> bool:
        return self.features is not None

    def of(self, images: Sequence[int]) -> list[int]:
        """The indices, in :attr:`features`, of these images' tiles."""
        starts = [0]
        for boxes in self.boxes:
            starts.append(starts[-1] + len(boxes))
        return [index for image in images for index in range(starts[image], starts[image + 1])]


@dataclass(frozen=True, eq=False)
class _Work:
    """What to make of an image: maps of ``embeddings``' prompts (no plan) or the plan's finished masks."""

    embeddings: torch.Tensor
    plan: TargetPlan | None
    options: MaskOptions
    output_size: tuple[int, int] | None


@dataclass(frozen=True)
class MaskRequest:
    """One request of :meth:`Segmenter.mask_requests`: an image and what to make of it (as :meth:`Segmenter.mask`
    takes them: ``prompts`` for one mask, or ``targets`` for several; ``options`` a
    :class:`~textmask.postprocess.MaskOptions` or None for the defaults)."""

    image: Any
    prompts: Any = None
    targets: Sequence[Any] | None = None
    negative_prompts: Any = ()
    options: MaskOptions | None = None
    output_size: tuple[int, int] | None = None


def _check_size(output_size: tuple[int, int] | None) -> tuple[int, int] | None:
    if output_size is None:
        return None
    size = (int(output_size[0]), int(output_size[1]))
    if size[0] < 1 or size[1] < 1:
        raise ValueError(f"output_size: must be positive (height, width), got {output_size}")
    return size


class _TargetFold:
    """Running per-target unions/intersections (and the negatives' union) of one image's maps, fed one prompt
    group at a time, so that memory holds T maps rather than P."""

    def __init__(self, plan: TargetPlan) -> None:
        self.plan = plan
        self.combined: list[torch.Tensor | None] = [None] * len(plan.targets)
        self.negative: torch.Tensor | None = None

    def add(self, probs: torch.Tensor, first: int) -> None:
        """``probs`` ``[g, H, W]``: the maps of ``plan.prompts[first : first + g]``."""
        last = first + probs.shape[0]
        for t, (indices, mode) in enumerate(zip(self.plan.targets, self.plan.combines)):
            inside = [i - first for i in indices if first <= i < last]
            if inside:
                part = combine(probs[inside], mode, dim=0)
                known = self.combined[t]
                self.combined[t] = part if known is None else combine(torch.stack([known, part]), mode, 0)
        inside = [i - first for i in self.plan.negative if first <= i < last]
        if inside:
            part = probs[inside].amax(dim=0)
            self.negative = part if self.negative is None else torch.maximum(self.negative, part)

    def result(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``([T, H, W] combined maps, [H, W] negatives' union or None)``."""
        return torch.stack(self.combined), self.negative  # type: ignore[arg-type]


class MaskStream:
    """``frames [B, H, W, C] → masks [B, T, H, W]`` for consecutive frames of one video (see :meth:`Segmenter.stream`).

    Temporal smoothing state is carried from call to call; call it with the frames in order.
    """

    def __init__(
        self,
        session: Segmenter,
        plan: TargetPlan,
        embeddings: torch.Tensor,
        options: MaskOptions,
        smoothing: float,
        batch_size: int | None,
    ) -> None:
        self.session, self.plan, self.embeddings, self.options = session, plan, embeddings, options
        self.smoothing, self.batch_size = smoothing, batch_size
        self._state: torch.Tensor | None = None
        self.stabilizer: Any = None  # a textmask.Stabilizer, applied to the maps after smoothing

    def __call__(
        self,
        frames: Any,
        *,
        output_size: tuple[int, int] | None = None,
        progress: ProgressCallback | None = None,
        output_device: str | torch.device = "cpu",
    ) -> torch.Tensor:
        """The next frames' masks.

        Args:
            frames: ``[B, H, W, C]`` (or a list of same-size frames), in order, after the previous call's.
            output_size, progress, output_device: as for :meth:`Segmenter.mask`.

        Returns:
            ``[B, T, H, W]`` float32 in [0, 1].
        """
        maps = self.session._run(
            frames, self.embeddings, None, self.options, output_size, self.batch_size, progress, output_device, False
        )  # [B, P, H, W]
        if isinstance(maps, list):  # frames of a list input: one size per video, so stack them
            sizes = {tuple(m.shape[-2:]) for m in maps}
            if len(sizes) > 1:
                raise InputError(f"frames: temporal smoothing needs frames of one size, got {sorted(sizes)}")
            maps = torch.stack(maps)
        if self.smoothing:
            maps, self._state = smooth_temporal(maps, self.smoothing, self._state)
        if self.stabilizer is not None:  # along the flow of the frames, per prompt
            maps = self.stabilizer.step_levels(torch.stack(as_image_batch(frames).levels(0, maps.shape[0])), maps)
        refine = None
        if self.options.refine is not None:  # guided by each frame, at the masks' size
            levels = as_image_batch(frames).levels(0, maps.shape[0])
            size = tuple(maps.shape[-2:])
            refiners = [self.session._refiner(image, size, self.options) for image in levels]

            def refine(masks: torch.Tensor) -> torch.Tensor:  # [B, T, H, W]
                return torch.stack([apply(frame) for apply, frame in zip(refiners, masks)])  # type: ignore[misc]

        return finish_targets(maps, self.plan, self.options, refine)


def as_targets(targets: Any, default_combine: str = "union") -> list[tuple[Target, str]]:
    """``targets=`` of :meth:`Segmenter.mask` → ``(Target, name in errors)`` pairs: a :class:`Target`, a list of
    prompts (combined with ``default_combine``) or one prompt each."""
    if isinstance(targets, Target) or is_single_prompt(targets):
        targets = [targets]
    try:
        items = list(targets)
    except TypeError:
        raise PromptError(f"targets: expected a list of targets, got {type(targets).__name__}") from None
    if not items:
        raise PromptError("targets: give at least one target (a list of prompts)")
    named = []
    for index, item in enumerate(items):
        name = f"targets[{index}]"
        if isinstance(item, Target):
            named.append((Target(tuple(as_prompt_list(list(item.prompts), name)), item.combine), name))
        else:
            named.append((Target(tuple(as_prompt_list(item, name)), default_combine), name))
    return named


_SESSIONS: dict[int, Segmenter] = {}


def load(
    model: str = DEFAULT_MODEL,
    device: str | torch.device | None = "cpu",
    dtype: str | torch.dtype | None = "float32",
    cache_dir: str | None = None,
    allow_pickle: bool = False,
    download: bool = True,
    backend: str | None = "auto",
    calibration: Any = None,
    check_precision: bool | None = None,
) -> Segmenter:
    """Load (once per process) a CLIPSeg model as a :class:`Segmenter`.

    Args:
        model: Hugging Face id (default ``CIDAS/clipseg-rd64-refined``), a local folder, a Hugging Face
            cache folder, or ``random-tiny`` / ``random-full`` (random weights, meaningless masks).
        device: ``"cpu"`` (default), ``"cuda"``, ``"mps"`` or ``"auto"``.
        dtype: ``"float32"`` (default), ``"bfloat16"``, ``"float16"``, ``"fast"`` (the quickest precision that
            agrees well on this device), or ``"int8"`` (OpenVINO).
        cache_dir: Hugging Face cache to look in and download to (ComfyUI: ``models/clipseg``).
        allow_pickle: also accept ``pytorch_model.bin`` weights (only from sources you trust).
        download: allow downloading when the weights are not cached.
        backend: what runs the vision tower: ``"torch"``, ``"openvino"`` (CPU only; ``pip install
            'textmask[openvino]'``; converted once and cached in textmask's cache), or ``"auto"`` (default:
            OpenVINO bfloat16 for ``dtype="fast"`` on a CPU with native bf16 when OpenVINO is installed, OpenVINO
            for ``dtype="int8"``, else torch; see :func:`textmask.model.resolve_backend`).
        calibration: ``dtype="int8"``: images to calibrate the quantization on (anything :meth:`Segmenter.mask`
            takes; a few dozen typical ones), instead of textmask's built-in set. Quantizing needs ``pip install
            'textmask[openvino-quantize]'`` once; the int8 model is cached.
        check_precision: a reduced precision (anything but float32) is compared with float32 on built-in scenes
            the first time it runs for a model (seconds; the result is cached); when it disagrees beyond the bound,
            the next precision runs instead, with a :class:`~textmask.precision.PrecisionFallbackWarning`
            (:mod:`textmask.precision`). None (default): on unless ``TEXTMASK_PRECISION_CHECK=0``; False: off.
            The outcome is ``session.precision_check``.
    """
    loaded = load_model(
        model,
        device=device,
        dtype=dtype,
        cache_dir=cache_dir,
        allow_pickle=allow_pickle,
        download=download,
        backend=backend,
        calibration=calibration,
    )
    session = _SESSIONS.get(id(loaded))
    if session is None or session.loaded is not loaded:
        session = _SESSIONS[id(loaded)] = Segmenter(loaded)

    def again(dtype: str, backend: str) -> Segmenter:
        return load(model, device, dtype, cache_dir, allow_pickle, download, backend, check_precision=False)

    def reference() -> Segmenter:  # a throwaway float32 session: not kept in the process cache
        kwargs = {"cache_dir": cache_dir, "allow_pickle": allow_pickle, "reuse": False, "backend": "torch"}
        return Segmenter(load_model(model, device=loaded.device, dtype="float32", **kwargs))

    return checked_session(session, again, reference, check_precision)


_CHECK_LOCK = threading.RLock()


def checked_session(
    session: Segmenter,
    load_again: Callable[[str, str], Segmenter],
    reference: Callable[[], Segmenter],
    option: bool | None = None,
) -> Segmenter:
    """The session that runs for ``session``'s request: ``session`` itself when its precision holds for its model
    (or is float32, or the check is off), else a fallback (:func:`textmask.precision.ensure_holds`), found once.

    Args:
        load_again: ``(dtype, backend)`` → an unchecked session of the same model in that precision.
        reference: → a float32 session of the same model, made only when a check has to be measured.
        option: ``check_precision`` (None: ``$TEXTMASK_PRECISION_CHECK``, on by default).
    """
    from . import precision

    if not (precision.enabled(option) and precision.needs_check(session)):
        return session
    with _CHECK_LOCK:
        runs = getattr(session, "_runs_instead", None)
        if runs is None:
            runs = session._runs_instead = precision.ensure_holds(session, load_again, reference)
    return runs


def verify_model(folder: str | Path) -> str:
    """Load weights and tokenizer from ``folder`` afresh (not from the process cache) and run one tiny mask.

    Returns:
        what was checked, in words.

    Raises:
        TextmaskError: the files do not load, or the test mask comes out wrong.
    """
    session = Segmenter(load_model(str(folder), device="cpu", dtype="float32", download=False, reuse=False))
    mask = session.mask(np.zeros((32, 32, 3), dtype=np.uint8), "a cat")
    if tuple(mask.shape) != (32, 32) or not bool(mask.isfinite().all()):
        raise ModelLoadError(f"model folder {folder}: loads, but a test mask came out wrong ({tuple(mask.shape)})")
    parameters = sum(p.numel() for p in session.model.parameters())
    return f"weights ({parameters / 1e6:.1f} M parameters) and tokenizer load, and a test mask runs"


def _torchvision_pixel_table(config: Any) -> torch.Tensor:
    """``[3, 256]`` pixel values as transformers' torchvision processors compute them (fused rescale+normalize)."""
    levels = torch.arange(256, dtype=torch.float32).expand(3, 256)
    if config.do_rescale and config.do_normalize:
        mean = torch.tensor(config.mean) * (1.0 / config.rescale_factor)
        std = torch.tensor(config.std) * (1.0 / config.rescale_factor)
        return ((levels - mean[:, None]) / std[:, None]).contiguous()
    if config.do_normalize:
        mean, std = torch.tensor(config.mean), torch.tensor(config.std)
        return ((levels - mean[:, None]) / std[:, None]).contiguous()
    return (levels * config.rescale_factor if config.do_rescale else levels).contiguous()


def _torchvision_resize(group: torch.Tensor, size: tuple[int, int], resample: str) -> torch.Tensor:
    """uint8 ``[n, 3, H, W]`` resized as transformers' torchvision processors do (on the CPU, as they do)."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as tvF

    mode = InterpolationMode.BICUBIC if resample == "bicubic" else InterpolationMode.BILINEAR
    resized = tvF.resize(group.cpu(), list(size), interpolation=mode, antialias=True)
    return resized.to(group.device)


_HF_SESSIONS: OrderedDict[tuple[int, int, str, str, str], tuple[Any, Any, Segmenter]] = OrderedDict()
_HF_SESSIONS_MAX = 4


def session_from_hf(
    processor: Any,
    model: Any,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    backend: str | None = "auto",
) -> Segmenter:
    """A :class:`Segmenter` over a ``(CLIPSegProcessor, CLIPSegForImageSegmentation)`` pair loaded elsewhere
    (e.g. another ComfyUI pack's loader).

    The model's weights go into textmask's own modules (:func:`textmask.model.adopt_model`), which run the
    masks; pixels are prepared as this processor prepares them (Pillow, or torchvision for transformers'
    torchvision image processors), bit for bit. The caller's model is never changed: when it already sits on
    ``device`` in ``dtype`` its parameters are used as they are (not copied) and ``segmenter.model is model``;
    otherwise converted copies are made (``segmenter.model`` is then textmask's module). Sessions are cached
    per (processor, model, device, dtype); the last few are kept.

    Args:
        processor: its tokenizer and image-processor settings (size, resample, mean, std, rescale) are used.
        model: the CLIPSeg model.
        device: target device (None: the model's own).
        dtype: target dtype (None: the model's own); with ``backend="openvino"`` its precision.
        backend: ``"torch"``, ``"openvino"`` or ``"auto"`` (as for :func:`load`); OpenVINO graphs of models
            handed over this way are cached under a hash of their weights.
    """
    from .model import adopt_model

    key = (id(model), id(processor), str(device), str(dtype), str(backend))
    cached = _HF_SESSIONS.get(key)
    if cached is not None and cached[0] is model and cached[1] is processor:
        _HF_SESSIONS.move_to_end(key)
        return cached[2]
    session = Segmenter(adopt_model(processor, model, device=device, dtype=dtype, backend=backend))

    def again(other: str, other_backend: str) -> Segmenter:
        return Segmenter(adopt_model(processor, model, device=session.device, dtype=other, backend=other_backend))

    def reference() -> Segmenter:
        return Segmenter(adopt_model(processor, model, device=session.device, dtype=torch.float32, backend="torch"))

    session = checked_session(session, again, reference)
    _HF_SESSIONS[key] = (model, processor, session)
    while len(_HF_SESSIONS) > _HF_SESSIONS_MAX:
        _HF_SESSIONS.popitem(last=False)
    return session
