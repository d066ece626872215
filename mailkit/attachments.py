"""Attachment header values: filenames decoded, cleaned and encoded per RFC 2231; types checked."""

from __future__ import annotations

import binascii
import codecs
import re
import unicodedata
import urllib.parse
from email.message import Message

from mailkit.errors import InvalidHeaderError
from mailkit.i18n import gettext as _

__all__ = [
    "DEFAULT_FILENAME",
    "attachment_content_id",
    "attachment_content_type",
    "clean_filename",
    "filename_params",
]

DEFAULT_FILENAME = "attachment"
# Bounds on the work one name may cost: the input is cut to this many characters before any
# decoding (NFKC can grow a character 18-fold), and decoding stops after so many rounds.
_MAX_INPUT = 1024
_ROUNDS = 8
# 255 bytes is the usual file-system limit; the margin leaves room for a " (2)" a client adds.
_MAX_BYTES = 200
_MAX_EXTENSION = 16
_FALLBACK_CHARS = 60

# RFC 2047 encoded words as liberal receivers decode them: anywhere in the value, inside a
# quoted string too, whatever the charset, malformed payloads included.
_ENCODED_WORD = re.compile(r"=\?([^?]*)\?([bBqQ])\?(.*?)\?=", re.DOTALL)
_BETWEEN_WORDS = re.compile(r"(?<=\?=)\s+(?==\?)")
# A value in RFC 2231 extended form (charset'language'percent-encoded), as a caller may pass
# what it read from another message.
_EXTENDED_VALUE = re.compile(r"([A-Za-z0-9][A-Za-z0-9_.:-]{0,39})'[A-Za-z0-9-]{0,35}'(.*)", re.S)
# A whole parameter list (`filename*0*=utf-8''..; filename*1*=...`).
_PARAMETER_LIST = re.compile(r"\s*(?:file)?name\*", re.IGNORECASE)
_PERCENT_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")

# Characters that some client, file system or shell shows or honours as a path separator:
# the fullwidth, small and big solidi survive NFKC as themselves only in part, the division,
# fraction and other slashes survive it entirely.
_SLASH_LOOKALIKES = frozenset(
    "\u2044\u2215\u2216\u2571\u2572\u27cb\u27cd\u29f5\u29f8\u29f9\u2afb\u2afd"
    "\ufe68\uff0f\uff3c\u3033\u3035\u1735\u0337\u0338\u20e5\u244a"
)
# Refused by Windows in a name (":" also opens an NTFS alternate data stream), and "?" is
# half of the encoded-word syntax: with none left, no receiver can find one to decode.
_WINDOWS_FORBIDDEN = frozenset('<>:"|?*')
_SPACE_CATEGORIES = frozenset({"Cc", "Zs", "Zl", "Zp"})
# Format characters (bidi overrides U+202E/U+2066.., zero-width ones), surrogates, private
# use and unassigned code points: invisible or undefined, so they can only mislead.
_DROPPED_CATEGORIES = frozenset({"Cf", "Cs", "Co", "Cn"})
_WINDOWS_RESERVED = frozenset(
    {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$", "CLOCK$"}
    | {f"{device}{digit}" for device in ("COM", "LPT") for digit in "0123456789"}
)


# --------------------------------------------------------------------------------------------
# Decoding: what a receiver would make of the name


def _bounded(name: str) -> str:
    # Both ends are kept: the extension is at the end.
    if len(name) <= _MAX_INPUT:
        return name
    return name[: _MAX_INPUT // 2] + name[-_MAX_INPUT // 2 :]


def _text_codec(charset: str) -> str | None:
    """The codec of a MIME charset name, or None (unknown, or a bytes-to-bytes codec)."""
    charset = charset.partition("*")[0].strip()  # RFC 2231 5: "utf-8*en" carries a language
    try:
        info = codecs.lookup(charset)
    except (LookupError, ValueError):
        return None
    # rot13, base64, zlib and the like are codecs too, but not text encodings.
    return info.name if getattr(info, "_is_text_encoding", True) else None


def _decode_bytes(data: bytes, charset: str) -> str:
    codec = _text_codec(charset) or "utf-8"
    try:
        return data.decode(codec, errors="replace")
    except (LookupError, UnicodeError, ValueError, TypeError):
        return data.decode("utf-8", errors="replace")


def _decode_word(match: re.Match[str]) -> str:
    charset, encoding, payload = match.groups()
    if encoding in "bB":
        # Receivers are lenient with bad padding and stray characters: so are we.
        payload = re.sub(r"[^A-Za-z0-9+/]", "", payload)
        payload += "=" * (-len(payload) % 4)
        try:
            data = binascii.a2b_base64(payload)
        except binascii.Error:
            # Undecodable here, so nobody can tell what a receiver shows: drop it.
            return "_"
    else:
        data = binascii.a2b_qp(payload.encode("utf-8", errors="replace"), header=True)
    return _decode_bytes(data, charset)


def _decode_encoded_words(name: str) -> str:
    if "=?" not in name:
        return name
    # RFC 2047 6.2: white space between adjacent encoded words is not displayed.
    return _ENCODED_WORD.sub(_decode_word, _BETWEEN_WORDS.sub("", name))


def _decode_parameter_list(name: str) -> str:
    if not _PARAMETER_LIST.match(name):
        return name
    # The stdlib joins RFC 2231 continuations and undoes their percent-encoding.
    flat = " ".join(name.splitlines())
    message = Message()
    message["Content-Disposition"] = "attachment; " + flat
    message["Content-Type"] = "application/octet-stream; " + flat
    try:
        found = message.get_filename()
    except (LookupError, UnicodeError, ValueError, TypeError):
        return name
    return found if isinstance(found, str) and found else name


def _decode_extended_value(name: str) -> str:
    match = _EXTENDED_VALUE.fullmatch(name)
    if not match or _text_codec(match.group(1)) is None:
        return name
    return _decode_bytes(urllib.parse.unquote_to_bytes(match.group(2)), match.group(1))


def _decode_percent(name: str) -> str:
    if not _PERCENT_ESCAPE.search(name):
        return name
    return urllib.parse.unquote(name, encoding="utf-8", errors="replace")


def _decode(name: str) -> str:
    for _round in range(_ROUNDS):
        decoded = _decode_parameter_list(name)
        decoded = _decode_extended_value(decoded)
        decoded = _decode_encoded_words(decoded)
        decoded = _decode_percent(decoded)
        decoded = _bounded(unicodedata.normalize("NFKC", decoded))
        if decoded == name:
            break
        name = decoded
    return name


# --------------------------------------------------------------------------------------------
# Cleaning: only a name, shown as what it is


def _clean_character(char: str) -> str:
    if char in _SLASH_LOOKALIKES or char in _WINDOWS_FORBIDDEN:
        return "_"
    category = unicodedata.category(char)
    if category in _SPACE_CATEGORIES:
        return " "
    if category in _DROPPED_CATEGORIES:
        return ""
    return char


def _split_extension(name: str) -> tuple[str, str]:
    stem, dot, extension = name.rpartition(".")
    if not dot or not stem or not extension or len(extension) > _MAX_EXTENSION:
        return name, ""
    if " " in extension:
        return name, ""
    return stem, "." + extension


def _truncate(name: str, limit: int) -> str:
    """At most `limit` UTF-8 bytes, cut on a character boundary, keeping the extension."""
    if len(name.encode("utf-8")) <= limit:
        return name
    stem, extension = _split_extension(name)
    room = limit - len(extension.encode("utf-8"))
    stem = stem.encode("utf-8")[:room].decode("utf-8", errors="ignore").rstrip(". ")
    return stem + extension


def _clean(name: str) -> str:
    name = "".join(_clean_character(char) for char in name)
    # A client's upload path ("C:\Users\ann\cv.pdf", "../../x"): only its last part names it.
    parts = [part for part in re.split(r"[/\\]", name) if part.strip(" .")]
    name = " ".join(parts[-1].split()) if parts else ""
    # Leading dots hide a file or climb a directory; Windows drops trailing dots and spaces.
    name = name.strip(". ")
    stem = name.split(".", 1)[0].rstrip(" ")
    if stem.upper() in _WINDOWS_RESERVED:
        name = "_" + name  # "CON.txt" and "nul" are devices on Windows, not files
    return _truncate(name, _MAX_BYTES).strip(". ")


def clean_filename(filename: str) -> str:
    """The name a receiver shows and saves: decoded as a receiver would, then only a name.

    RFC 2047 encoded words, RFC 2231 values and continuations and percent-encoding are
    decoded and the result NFKC-normalized, repeatedly, until nothing changes; then paths,
    control, bidi and other invisible characters, characters Windows refuses, leading and
    trailing dots and Windows device names are taken out and the length is bounded keeping
    the extension. The result has no "?" (so no encoded word) and no "%XX" escape left for a
    careless receiver to decode again; an empty result is DEFAULT_FILENAME.
    """
    name = _bounded(str(filename))
    for _round in range(_ROUNDS):
        cleaned = _clean(_decode(name))
        if cleaned == name:
            break
        name = cleaned
    else:
        # Still decoding after every round (a name nested deeper than any real one):
        # take away what a receiver could decode further.
        name = _clean(name.replace("%", "_"))
    return name or DEFAULT_FILENAME


# --------------------------------------------------------------------------------------------
# Encoding


_PLAIN = re.compile(r"[ -~]{1,60}")
# RFC 2231 7: attribute-char, everything else is %-encoded.
_RFC2231_SAFE = "!#$&+-.^_`|~"
_RFC2231_CHUNK = 50  # keeps " filename*N*=utf-8''<chunk>;" under 78 characters


def _ascii_fallback(name: str) -> str:
    """A printable ASCII name with the same extension, for clients without RFC 2231."""
    decomposed = unicodedata.normalize("NFKD", name)
    ascii_name = "".join(
        char if " " <= char <= "~" else ("" if unicodedata.combining(char) else "_")
        for char in decomposed
    )
    ascii_name = _clean(re.sub(r"_+", "_", ascii_name.replace(";", "_")).replace("%", "_"))
    stem, extension = _split_extension(ascii_name)
    ascii_name = (stem.strip("_ ") or DEFAULT_FILENAME) + extension
    if len(ascii_name) > _FALLBACK_CHARS:
        ascii_name = _truncate(ascii_name, _FALLBACK_CHARS)
    return ascii_name


def _extended(name: str, value: str) -> str:
    """RFC 2231 `name*=utf-8''...`, in continuations when long."""
    encoded = urllib.parse.quote(value, safe=_RFC2231_SAFE)
    if len(encoded) <= _RFC2231_CHUNK:
        return f";\r\n {name}*=utf-8''{encoded}"
    # Continuations end on character boundaries: RFC 2231 joins the bytes before decoding
    # them, but some readers (Rust's mailparse) decode each section on its own.
    chunks: list[str] = [""]
    for char in value:
        quoted = urllib.parse.quote(char, safe=_RFC2231_SAFE)
        if len(chunks[-1]) + len(quoted) > _RFC2231_CHUNK:
            chunks.append("")
        chunks[-1] += quoted
    chunks[0] = "utf-8''" + chunks[0]
    return "".join(f";\r\n {name}*{index}*={chunk}" for index, chunk in enumerate(chunks))


def filename_params(filename: str) -> tuple[str, str]:
    """(`; name=...` for Content-Type, `; filename=...` for Content-Disposition) of a name
    `clean_filename` returned.

    A short printable ASCII name is a quoted string in both. Any other is RFC 2231
    (`filename*=utf-8''...`) in Content-Disposition, where RFC 2183 readers look first, with
    an ASCII fallback of the same extension in Content-Type's `name` for older clients: a
    plain `filename` next to `filename*` is a duplicate parameter that parsers resolve
    differently (Python's takes the first), and no RFC 2047 word is written inside quotes.
    """
    # A ";" inside quotes ends the parameter for readers that split first (Rust's mailparse
    # reads `filename="a.txt; filename=evil.exe"` as `evil.exe"`): percent-encoded instead.
    if _PLAIN.fullmatch(filename) and not set('"\\?;') & set(filename):
        return f';\r\n name="{filename}"', f';\r\n filename="{filename}"'
    return f';\r\n name="{_ascii_fallback(filename)}"', _extended("filename", filename)


# --------------------------------------------------------------------------------------------
# Content-Type and Content-ID of a part

_MIME_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,62}/[a-z0-9][a-z0-9!#$&^_.+-]{0,62}")
_CONTENT_ID = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~.@]{1,200}")


def attachment_content_type(value: str) -> str:
    """A bare `type/subtype`, lower-cased; InvalidHeaderError for anything else.

    Parameters, CR/LF and other controls are refused, not repaired: the charset and name
    parameters are Skylark's to write, and a value carrying them is a mistake or an attack.
    """
    content_type = str(value).strip(" \t").lower()
    if not _MIME_TYPE.fullmatch(content_type) or content_type.startswith("multipart/"):
        raise InvalidHeaderError(
            _("The attachment type %(value)s is not a plain type/subtype such as image/png.")
            % {"value": ascii(value)[:80]}
        )
    return content_type


def attachment_content_id(value: str) -> str:
    """A Content-ID without its angle brackets; InvalidHeaderError when it cannot be one."""
    content_id = str(value).strip(" \t").removeprefix("<").removesuffix(">")
    if not _CONTENT_ID.fullmatch(content_id):
        raise InvalidHeaderError(
            _(
                "The Content-ID %(value)s may hold only letters, digits and . @ - _ and the "
                "like, without spaces, angle brackets or line breaks."
            )
            % {"value": ascii(value)[:80]}
        )
    return content_id
