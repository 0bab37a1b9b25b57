"""Python's hpack library (python-hyper's, which its h2 uses) on the other
side of Portico's HPACK codec, for tests/hpack.rs.

Reads one JSON object from stdin:
  {"encode": [block, ...], "table_sizes": {"N": size, ...}, "decode": ["hex", ...]}
where a block is [[name, value, never_indexed], ...] (strings whose code
points are the octets, 0-255). Encodes the blocks in order on one encoder
(Huffman-coded, every indexable field added to the dynamic table; before
block N the table's size becomes size), and decodes the hex blocks in
order on one decoder. Writes
  {"encoded": ["hex", ...], "decoded": [[[name, value, never_indexed], ...], ...]}
"""

import json
import sys

from hpack import Decoder, Encoder, HeaderTuple, NeverIndexedHeaderTuple


def octets(text):
    return text.encode("latin-1")


def main():
    request = json.load(sys.stdin)
    encoder = Encoder()
    sizes = {int(k): v for k, v in request.get("table_sizes", {}).items()}
    encoded = []
    for n, block in enumerate(request["encode"]):
        if n in sizes:
            encoder.header_table_size = sizes[n]
        fields = [
            (NeverIndexedHeaderTuple if never else HeaderTuple)(octets(name), octets(value))
            for name, value, never in block
        ]
        encoded.append(encoder.encode(fields, huffman=True).hex())
    decoder = Decoder()
    decoded = []
    for block in request["decode"]:
        fields = decoder.decode(bytes.fromhex(block), raw=True)
        decoded.append(
            [
                [f[0].decode("latin-1"), f[1].decode("latin-1"), isinstance(f, NeverIndexedHeaderTuple)]
                for f in fields
            ]
        )
    json.dump({"encoded": encoded, "decoded": decoded}, sys.stdout)


if __name__ == "__main__":
    main()
