"""Chat messages for every engine: roles, text and page images, and their conversion to backend formats.

A message's content is a string or a tuple of parts (``TextPart``, ``ImagePart``). An image is PNG/JPEG bytes
or a ``PIL.Image``. The same messages become a Hugging Face chat-template list (images as placeholders, the
images returned separately), OpenAI ``image_url`` data URLs, or Ray-friendly plain dicts (images as bytes).
"""

from __future__ import annotations

import base64
import hashlib
import io
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Sequence, Union

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True, eq=False)
class ImagePart:
    """A page image: encoded bytes (PNG, JPEG, ...) or a ``PIL.Image.Image``."""

    image: Any

    def __post_init__(self) -> None:
        if isinstance(self.image, (bytes, bytearray, memoryview)):
            object.__setattr__(self, "image", bytes(self.image))
        elif not _is_pil(self.image):
            raise TypeError(f"ImagePart.image: got {type(self.image).__name__}, expected bytes or PIL.Image.Image")

    def key(self) -> str:
        """A content hash: equal images (same bytes, or same pixels for PIL) give equal keys."""
        h = hashlib.sha1()
        if isinstance(self.image, bytes):
            h.update(b"b")
            h.update(self.image)
        else:
            h.update(f"p{self.image.mode}{self.image.size}".encode())
            h.update(self.image.tobytes())
        return h.hexdigest()

    def to_pil(self):
        """Decode to an RGB ``PIL.Image``; raise ValueError for bytes that are not an image."""
        from PIL import Image, UnidentifiedImageError

        img = self.image
        if isinstance(img, bytes):
            try:
                img = Image.open(io.BytesIO(img))
                img.load()
            except (UnidentifiedImageError, OSError) as err:
                raise ValueError(f"image: could not decode {len(self.image)} bytes as an image ({err})") from None
        return img.convert("RGB") if img.mode != "RGB" else img

    def to_data_url(self) -> str:
        """``data:image/...;base64,...``; bytes are sent as they are, PIL images are encoded as PNG."""
        if isinstance(self.image, bytes):
            data, mime = self.image, sniff_mime(self.image)
        else:
            buf = io.BytesIO()
            self.to_pil().save(buf, format="PNG")
            data, mime = buf.getvalue(), "image/png"
        return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"

    def to_bytes(self) -> bytes:
        """Encoded bytes (PIL images are encoded as PNG)."""
        if isinstance(self.image, bytes):
            return self.image
        buf = io.BytesIO()
        self.to_pil().save(buf, format="PNG")
        return buf.getvalue()


@dataclass(frozen=True)
class TextPart:
    """A piece of text inside a message."""

    text: str

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise TypeError(f"TextPart.text: got {type(self.text).__name__}, expected str")


Part = Union[TextPart, ImagePart]


@dataclass(frozen=True, eq=False)
class Message:
    """One chat turn. ``content`` is a string or a tuple of ``TextPart``/``ImagePart``."""

    role: str
    content: Union[str, tuple]

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"Message.role: got {self.role!r}, expected one of {ROLES}")
        if isinstance(self.content, str):
            return
        if isinstance(self.content, list):
            object.__setattr__(self, "content", tuple(self.content))
        if not isinstance(self.content, tuple):
            raise TypeError(f"Message.content: got {type(self.content).__name__}, expected str or parts")
        for part in self.content:
            if not isinstance(part, (TextPart, ImagePart)):
                raise TypeError(f"Message.content part: got {type(part).__name__}, expected TextPart or ImagePart")
        if self.role != "user" and any(isinstance(p, ImagePart) for p in self.content):
            raise ValueError(f"Message: images are only allowed in user turns, got one in a {self.role!r} turn")

    @property
    def parts(self) -> tuple:
        """Content as a tuple of parts (a string becomes one ``TextPart``)."""
        return (TextPart(self.content),) if isinstance(self.content, str) else self.content


def _is_pil(obj: Any) -> bool:
    # Checked by name so that importing this module does not import PIL.
    return any(c.__module__.startswith("PIL.") and c.__name__ == "Image" for c in type(obj).__mro__)


def _part(item: Any) -> Part:
    if isinstance(item, (TextPart, ImagePart)):
        return item
    if isinstance(item, str):
        return TextPart(item)
    return ImagePart(item)


def system(text: str) -> Message:
    """A system turn."""
    return Message("system", text)


def user(*parts: Any) -> Message:
    """A user turn from strings, image bytes / PIL images, or parts, in order: ``user(page_png, "Question?")``."""
    if len(parts) == 1 and isinstance(parts[0], str):
        return Message("user", parts[0])
    return Message("user", tuple(_part(p) for p in parts))


def assistant(text: str) -> Message:
    """An assistant turn (e.g. a previous answer, for a repair request)."""
    return Message("assistant", text)


def sniff_mime(data: bytes) -> str:
    """MIME type of encoded image bytes from their magic number; PNG when unknown."""
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    return "image/png"


def images_of(messages: Sequence[Message]) -> list[ImagePart]:
    """All images of a conversation, in order."""
    return [p for m in messages for p in m.parts if isinstance(p, ImagePart)]


def image_keys(messages: Sequence[Message]) -> tuple[str, ...]:
    """Content hashes of the conversation's images, in order (the grouping key for shared-page prefixes)."""
    return tuple(p.key() for p in images_of(messages))


def to_template_dicts(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """Hugging Face chat-template input: images become ``{"type": "image"}`` placeholders (see ``images_of``)."""
    out: list[dict[str, Any]] = []
    for m in messages:
        if isinstance(m.content, str):
            out.append({"role": m.role, "content": m.content})
            continue
        content = [{"type": "image"} if isinstance(p, ImagePart) else {"type": "text", "text": p.text} for p in m.parts]
        out.append({"role": m.role, "content": content})
    return out


def to_openai_dicts(messages: Sequence[Message], image_part: Optional[Callable[[ImagePart], dict]] = None,
                    images_first: bool = False) -> list[dict[str, Any]]:
    """OpenAI chat-completions ``messages``: images as ``image_url`` data URLs, or as ``image_part(part)`` makes them
    (the vLLM engine passes decoded PIL images). ``images_first`` moves each turn's images before its text (stable),
    so requests about one page share the longest token prefix."""
    out: list[dict[str, Any]] = []
    for m in messages:
        if isinstance(m.content, str):
            out.append({"role": m.role, "content": m.content})
            continue
        parts = m.parts
        if images_first:
            parts = tuple(p for p in parts if isinstance(p, ImagePart)) + tuple(
                p for p in parts if not isinstance(p, ImagePart))
        content = [
            (image_part(p) if image_part else {"type": "image_url", "image_url": {"url": p.to_data_url()}})
            if isinstance(p, ImagePart)
            else {"type": "text", "text": p.text}
            for p in parts
        ]
        out.append({"role": m.role, "content": content})
    return out


def to_plain_dicts(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """Arrow/Parquet-friendly dicts (images as encoded bytes); ``from_dicts`` reads them back."""
    out = []
    for m in messages:
        content = [
            {"type": "image", "text": None, "image": p.to_bytes()}
            if isinstance(p, ImagePart)
            else {"type": "text", "text": p.text, "image": None}
            for p in m.parts
        ]
        out.append({"role": m.role, "content": content})
    return out


def from_dicts(items: Iterable[dict[str, Any]]) -> list[Message]:
    """Messages from plain or OpenAI-style dicts.

    Accepted parts: ``{"type": "text", "text": ...}``, ``{"type": "image", "image": bytes|PIL}`` and
    ``{"type": "image_url", "image_url": {"url": "data:image/...;base64,..."}}``; content may be a string.
    """
    out: list[Message] = []
    for i, item in enumerate(items):
        if isinstance(item, Message):
            out.append(item)
            continue
        if not isinstance(item, dict) or "role" not in item or "content" not in item:
            raise ValueError(f"messages[{i}]: got {item!r:.80}, expected a dict with 'role' and 'content'")
        content = item["content"]
        if isinstance(content, str):
            out.append(Message(item["role"], content))
            continue
        parts: list[Part] = []
        for j, p in enumerate(content):
            kind = p.get("type")
            if kind == "text":
                parts.append(TextPart(p["text"]))
            elif kind == "image":
                parts.append(ImagePart(p["image"]))
            elif kind == "image_url":
                parts.append(ImagePart(_decode_data_url(p["image_url"]["url"])))
            else:
                raise ValueError(f"messages[{i}].content[{j}].type: got {kind!r}, expected text, image or image_url")
        out.append(Message(item["role"], tuple(parts)))
    return out


def _decode_data_url(url: str) -> bytes:
    if not url.startswith("data:") or ";base64," not in url:
        raise ValueError(f"image_url: got {url[:40]!r}..., expected a base64 data URL (no remote fetches)")
    return base64.b64decode(url.split(";base64,", 1)[1])
