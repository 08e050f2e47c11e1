"""A token's own bytes and text, as OpenAI's log-probabilities report each token: decoding one token of a
character cut in two gives "\ufffd", so the bytes come from the token's vocabulary entry where the
tokenizer's kind says how (GPT-2's byte-level alphabet; SentencePiece's `<0xNN>` byte tokens and "▁" for a
space), else from its decoded text."""

from __future__ import annotations

import functools
import re

from tokenizers import decoders

BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # SentencePiece's byte fallback


@functools.cache
def byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level alphabet reversed: the character each byte is written as -> the byte."""
    printable = {
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    }
    alphabet, shifted = {}, 0
    for byte in range(256):
        if byte in printable:
            alphabet[chr(byte)] = byte
        else:
            alphabet[chr(256 + shifted)] = byte
            shifted += 1
    return alphabet


class TokenBytes:
    """Token id -> its bytes (`bytes_of`) and its text (`text_of`, "\ufffd" where the bytes are not
    whole characters), remembered per id."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self.byte_level = isinstance(getattr(backend, "decoder", None), decoders.ByteLevel)
        self.known: dict[int, bytes] = {}

    def bytes_of(self, token: int) -> bytes:
        if token not in self.known:
            self.known[token] = self._bytes(token)
        return self.known[token]

    def text_of(self, token: int) -> str:
        return self.bytes_of(token).decode("utf-8", errors="replace")

    def _bytes(self, token: int) -> bytes:
        piece = self.tokenizer.convert_ids_to_tokens(token)
        if piece is None:
            return self.tokenizer.decode([token]).encode()
        alphabet = byte_level_alphabet()
        if self.byte_level and all(char in alphabet for char in piece):
            return bytes(alphabet[char] for char in piece)
        if match := BYTE_TOKEN.fullmatch(piece):
            return bytes([int(match.group(1), 16)])
        if "▁" in piece:
            return piece.replace("▁", " ").encode()
        return self.tokenizer.decode([token]).encode()
