#!/usr/bin/env python3
"""Writes the hand-made seed corpus (corpus/<target>/seed-*). Run from chat/fuzz/.

Input formats (see src/harness.rs, Config::from_input):
- parse_request: the bytes of one frame.
- websocket: byte 0's top two bits pick the part (0/1: client frames into the reader,
  2: the HTTP request head, 3: the framer's give-back), otherwise as decoder.
- decoder, frame_reader: byte 0 picks the frame limit (low 2 bits: 0 = 64 KiB, 1 = byte>>2,
  2 = 64 + 16*(byte>>2), 3 = 4096), byte 1 the read sizes (0 = one read, 1 = one byte per
  read, n = random reads of 1..=n bytes), then the stream.
Files that fuzzing added (named by their hash) are left alone.
"""
import os

LOGIN = b'{"id":22,"msgid":1,"password":"pa"}'
FRAMES = {
    # Every msgid of protocol.md section 2 plus ours (11..14), as the legacy peers send them.
    "login": LOGIN,
    "login_empty_password": b'{"id":22,"msgid":1,"password":""}',
    "login_ext": b'{"ext":1,"id":22,"msgid":1,"password":"pa"}',
    "login_ack_ok": b'{"errno":0,"friends":["{\\"id\\":13,\\"name\\":\\"bob\\",\\"state\\":\\"online\\"}"],'
                    b'"groups":["{\\"groupdesc\\":\\"d\\",\\"groupname\\":\\"g\\",\\"id\\":2,\\"users\\":[]}"],'
                    b'"id":22,"msgid":2,"name":"alice","offlinemsg":["{\\"msgid\\":6}"]}',
    "login_ack_bad": b'{"errmsg":"id or password is invalid!","errno":1,"msgid":2}',
    "loginout": b'{"id":22,"msgid":3}',
    "reg": b'{"msgid":4,"name":"bob","password":"x"}',
    "reg_ack": b'{"errno":0,"id":23,"msgid":5}',
    "one_chat": b'{"id":1,"msg":"hi","msgid":6,"name":"a","time":"2024-01-01 00:00:00","toid":2}',
    "one_chat_to": b'{"id":1,"msg":"m","msgid":6,"name":"a","time":"t","to":3}',
    "one_chat_to_and_toid": b'{"id":1,"msg":"m","msgid":6,"to":3,"toid":4}',
    "add_friend": b'{"friendid":5,"id":22,"msgid":7}',
    "create_group": b'{"groupdesc":"d","groupname":"g","id":22,"msgid":8}',
    "create_group_no_desc": b'{"groupname":"g","id":22,"msgid":8}',
    "add_group": b'{"groupid":3,"id":22,"msgid":9}',
    "group_chat": b'{"groupid":3,"id":22,"msg":"hi","msgid":10,"name":"a","time":"t"}',
    "error": b'{"errmsg":"missing field \\"id\\"","errno":104,"msgid":11,"reqmsgid":7}',
    "ack": b'{"errmsg":"","errno":0,"groupid":5,"msgid":12,"reqmsgid":8}',
    "ping": b'{"msgid":13}',
    "pong": b'{"msgid":14}',
    # Edge cases.
    "unicode": '{"groupid":1,"id":2,"msg":"你好 \\"q\\" }{ 😀 \\\\ \\n\\u0001\\u0000","msgid":10}'.encode(),
    "unicode_key": '{"msgid":13,"ключ":{"键":[1,2.5,null,true]}}'.encode(),
    "braces_in_strings": b'{"m":"a\\"}b","n":"\\\\","o":"{[","msgid":13,"p":"\\\\\\"}"}',
    "huge_id": b'{"id":9223372036854775808,"msgid":3}',
    "max_id": b'{"id":9223372036854775807,"msgid":3}',
    "negative_id": b'{"id":-4,"msgid":3}',
    "zero_id": b'{"id":0,"msgid":3}',
    "float_id": b'{"id":1.0,"msgid":3}',
    "exp_msgid": b'{"msgid":1e2}',
    "huge_msgid": b'{"msgid":18446744073709551616}',
    "string_msgid": b'{"msgid":"1"}',
    "no_msgid": b'{"id":1}',
    "unknown_msgid": b'{"msgid":99}',
    "bad_ext": b'{"ext":2,"msgid":13}',
    "long_name": b'{"msgid":4,"name":"' + b"a" * 51 + b'","password":"p"}',
    "null_field": b'{"groupname":null,"id":1,"msgid":8}',
    "duplicate_key": b'{"msgid":1,"msgid":13}',
    "top_level_array": b'[1,{"a":2}]',
    "deep_nesting": b"[" * 200 + b"]" * 200,
    "deep_object": b'{"a":' * 130 + b"1" + b"}" * 130,
    "invalid_utf8": b'{"msg":"\xff\xfe","msgid":6}',
    "not_json": b"{abc}",
    "pretty": b'{\n  "msgid": 13,\n  "x": [ 1, 2 ]\n}',
}


def write(target, name, data):
    d = os.path.join("corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def limit_byte(kind, high=0):
    return bytes([(high << 2) | kind])


def ws_frame(opcode, payload, fin=True, mask=b"\x37\xfa\x21\x3d"):
    """A client WebSocket frame (RFC 6455 5.2), masked unless mask is None."""
    b0 = (0x80 if fin else 0) | opcode
    n = len(payload)
    m = 0x80 if mask is not None else 0
    if n < 126:
        head = bytes([b0, m | n])
    elif n < 65536:
        head = bytes([b0, m | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([b0, m | 127]) + n.to_bytes(8, "big")
    if mask is None:
        return head + payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


UPGRADE = (b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
           b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")


def websocket_seeds():
    text = lambda p: ws_frame(0x1, p)
    reader = {
        "login": text(LOGIN),
        "two_frames_one_message": text(FRAMES["ping"] + FRAMES["login"]),
        "ping_pong_close": ws_frame(0x9, b"hi") + ws_frame(0xA, b"") + ws_frame(0x8, b"\x03\xe8bye"),
        "fragmented": ws_frame(0x1, b'{"msgid"', fin=False) + ws_frame(0x9, b"") + ws_frame(0x0, b":13}"),
        "binary": ws_frame(0x2, FRAMES["ping"]),
        "unmasked": ws_frame(0x1, FRAMES["ping"], mask=None),
        "bad_utf8": text(b'{"msg":"\xff"}'),
        "bad_opcode": ws_frame(0x3, b"x"),
        "long_126": text(b'{"msg":"' + b"a" * 300 + b'"}'),
        "long_127": text(b'{"msg":"' + b"b" * 70000 + b'"}'),
        "continuation_first": ws_frame(0x0, b"x"),
        "after_close": ws_frame(0x8, b"") + text(FRAMES["ping"]),
    }
    for name, stream in reader.items():
        write("websocket", "reader-" + name, b"\x00\x00" + stream)
        write("websocket", "reader-bytewise-" + name, b"\x00\x01" + stream)
    write("websocket", "reader-small-limit", limit_byte(2, 1) + b"\x05" + text(b'{"msg":"' + b"c" * 2000 + b'"}'))
    http = {
        "upgrade": UPGRADE,
        "upgrade_and_frame": UPGRADE + text(FRAMES["ping"]),
        "get_root": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        "get_query": b"GET /app.js?v=2#x HTTP/1.1\r\n\r\n",
        "head": b"HEAD /style.css HTTP/1.1\r\n\r\n",
        "post": b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        "version_8": UPGRADE.replace(b"Version: 13", b"Version: 8"),
        "no_key": UPGRADE.replace(b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", b""),
        "tls_hello": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        "partial": UPGRADE[:40],
    }
    for name, stream in http.items():
        write("websocket", "http-" + name, b"\x80\x00" + stream)
    frames = b"\0".join(FRAMES[k] for k in ("one_chat", "group_chat", "login_ack_ok", "pong")) + b"\0"
    for cut in (0, 1, 100, 200, 255):
        write("websocket", f"framer-cut{cut}", b"\xc0" + bytes([cut]) + frames)


def main():
    websocket_seeds()
    for name, frame in FRAMES.items():
        write("parse_request", name, frame)

    legacy_client = b"".join(f + b"\0" for f in FRAMES.values())
    legacy_server = b"".join(FRAMES[k] for k in ("login_ack_ok", "reg_ack", "one_chat", "pong"))
    streams = {
        "legacy_client": legacy_client,
        "legacy_server_coalesced": legacy_server,
        "separators": b"\0 \t\r\n" + LOGIN + b"\0\0\n  \r\n" + FRAMES["ping"] + b"\0",
        "back_to_back": b'{"msgid":2}{"msgid":5}{"a":[1,{"b":[]}],"msgid":14}',
        "partial_tail": LOGIN + b"\0" + LOGIN[:20],
        "garbage_after_frame": FRAMES["ping"] + b"\0hello" + FRAMES["ping"],
        "garbage_start": b"GET / HTTP/1.1\r\n\r\n",
        "closer_first": b"}{}",
        "invalid_then_valid": FRAMES["invalid_utf8"] + b"\0" + FRAMES["not_json"] + FRAMES["ping"],
        "array_then_object": FRAMES["top_level_array"] + FRAMES["ping"],
        "escape_at_split": b'{"msg":"\\\\\\"}\\\\","msgid":6}\0',
        "deep_open": b"[" * 300,
        "only_separators": b"\0\0 \n",
    }
    configs = {
        "one_read": limit_byte(0) + b"\x00",
        "bytewise": limit_byte(0) + b"\x01",
        "reads_of_7": limit_byte(0) + b"\x07",
        "reads_of_64": limit_byte(0) + b"\x40",
    }
    for target in ("decoder", "frame_reader"):
        for sname, stream in streams.items():
            for cname, cfg in configs.items():
                if cname in ("one_read", "bytewise") or sname in ("legacy_client", "escape_at_split"):
                    write(target, f"{sname}-{cname}", cfg + stream)
        # Limits: a 7-byte frame at limit 7 and 6, oversize at a small limit, exactly 4096.
        write(target, "limit7", limit_byte(1, 7) + b"\x00" + b'\0\0{"a":1}{"b":2}')
        write(target, "limit6", limit_byte(1, 6) + b"\x03" + b'{"a":1}')
        write(target, "limit0", limit_byte(1, 0) + b"\x00" + b"{}")
        big = b'{"msg":"' + b"y" * (4096 - 10) + b'"}'
        write(target, "exactly_4096", limit_byte(3) + b"\x00" + big + b"\0" + big[:-1] + b'x"}')
        write(target, "oversize_1072", limit_byte(2, 63) + b"\x20" + b'{"msg":"' + b"z" * 1100)


if __name__ == "__main__":
    main()
