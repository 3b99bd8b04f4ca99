"""Building blocks of edgeseal's formats. Hazardous materials: read the docs first.

The safe recipes live in :mod:`edgeseal.sdk.sealed` and
:mod:`edgeseal.sdk.envelope`. The modules here expose the pieces those recipes
are made of, for tests, tools and other formats:

* :mod:`~edgeseal.sdk.hazmat.keys` - the content key wrapper that never prints itself.
* :mod:`~edgeseal.sdk.hazmat.format` - the sealed-model preamble and header codec.
* :mod:`~edgeseal.sdk.hazmat.stream` - the STREAM chunked AEAD (no I/O).
* :mod:`~edgeseal.sdk.hazmat.container` - sealing/opening a whole file object
  with every knob exposed (chunk size, nonce prefix).
* :mod:`~edgeseal.sdk.hazmat.hpke` - the RFC 9180 base-mode key schedule with a
  pluggable Diffie-Hellman, so the recipient's private key may live in a TPM.

Using them directly makes mistakes possible that the recipes rule out (reusing
a nonce prefix, acting on plaintext of a stream that later fails).
"""
