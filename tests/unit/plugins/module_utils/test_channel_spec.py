"""plugins/module_utils/channel_spec.py: reading, writing and checking xl channel specs.

Specs are read as xl reads them (comma pieces, `=`, C whitespace trimmed); every channel
list written into an xl config here is read back through Debian's libxlutil
(tests/oracle/libxlutil.py) and split the way xl splits it.
"""

import pytest
from ansible_collections.xenchannel.provision.plugins.module_utils.channel_spec import (
    CHANNEL_KEYS,
    MAX_CHANNELS,
    ChannelSpecError,
    check_channels,
    format_spec,
    parse_spec,
    valid_name,
    validate_channel,
    validate_channels,
)
from ansible_collections.xenchannel.provision.plugins.module_utils.xl_config import XlConfig
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.oracle import libxlutil

ROOT = "/run/xenchannel"
SOCKET = {
    "connection": "socket",
    "name": "org.xenchannel.provision.0",
    "path": "/run/xenchannel/vm1.sock",
}
SOCKET_TEXT = "connection=socket, name=org.xenchannel.provision.0, path=/run/xenchannel/vm1.sock"
# libvirt tests/xlconfigdata/test-channel-unix.cfg
LIBVIRT = "connection=socket,path=/path/to/socket,name=org.qemu.guest_agent.0"
# docs/misc/channel.txt (Xen), joined onto one line: xl cannot read it across lines.
XEN_DOC = (
    "connection=socket, name=org.my.cloud.software.agent.version1, path = "
    "/my/cloud/software/talk/to/domain/"
)


def xl_split(item: str) -> dict:
    """What xl's parse_config_data makes of one channel item (strtok, strchr, trim)."""
    pairs = {}
    for piece in item.split(","):
        if not piece:
            continue
        key, _, value = piece.partition("=")
        pairs[key.strip(" \t\n\v\f\r")] = value.strip(" \t\n\v\f\r")
    return pairs


# -- parse_spec -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (SOCKET_TEXT, SOCKET),
        (
            LIBVIRT,
            {"connection": "socket", "path": "/path/to/socket", "name": "org.qemu.guest_agent.0"},
        ),
        (
            "\tconnection = pty ,name=org.a.b.0\v",
            {"connection": "pty", "name": "org.a.b.0"},
        ),
        (",,name=org.a.b.0,,connection=pty,", {"name": "org.a.b.0", "connection": "pty"}),
        ("", {}),
        ("backend=dom0,name=x", {"backend": "dom0", "name": "x"}),
        ("future=1", {"future": "1"}),
        (
            XEN_DOC,
            {
                "connection": "socket",
                "name": "org.my.cloud.software.agent.version1",
                "path": "/my/cloud/software/talk/to/domain/",
            },
        ),
    ],
)
def test_parse_spec_reads_as_xl_does(spec, expected):
    assert parse_spec(spec) == expected
    assert parse_spec(spec) == xl_split(spec)


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("connection=socket, name", "the piece ' name' without '='"),
        ("name=a=b", "more than one '='"),
        ("=org.a.b.0", "no key before '='"),
        ("name=, connection=pty", "gives name an empty value"),
        ("name= \t, connection=pty", "gives name an empty value"),
        ("name=org.a.b.0, name=org.a.c.0", "gives name twice"),
        (" , name=x", "without '='"),
    ],
)
def test_parse_spec_refuses_what_xl_refuses_or_reads_ambiguously(spec, fragment):
    with pytest.raises(ChannelSpecError) as info:
        parse_spec(spec)
    assert fragment in str(info.value)
    assert repr(spec) in str(info.value)
    assert len(info.value.problems) == 1


def test_parse_spec_needs_a_string():
    with pytest.raises(ChannelSpecError, match="is not a string"):
        parse_spec(None)  # type: ignore[arg-type]


# -- format_spec --------------------------------------------------------------------------------


def test_format_spec_uses_the_canonical_key_order():
    channel = {
        "path": "/run/xenchannel/a.sock",
        "backend": "dom0",
        "name": "org.a.b.0",
        "connection": "socket",
    }
    assert (
        format_spec(channel)
        == "connection=socket, name=org.a.b.0, path=/run/xenchannel/a.sock, backend=dom0"
    )
    assert CHANNEL_KEYS == ("connection", "name", "path", "backend")
    assert (
        format_spec({"name": "org.a.b.0", "connection": "pty"}) == "connection=pty, name=org.a.b.0"
    )


@pytest.mark.parametrize(
    ("channel", "fragment"),
    [
        ({"name": "org.a,b.0"}, "contains ','"),
        ({"name": "org.a=b.0"}, "contains '='"),
        ({"path": '/run/"x"'}, "contains '\"'"),
        ({"path": "/run/x,y=z"}, "contains ',' and '='"),
        ({"name": " org.a.b.0"}, "leading or trailing whitespace"),
        ({"name": "org.a.b.0\n"}, "control character"),
        ({"name": ""}, "empty name"),
        ({"name": 5}, "name of type int"),
        ({"speed": "fast"}, "unknown key 'speed'"),
    ],
)
def test_format_spec_refuses_values_xl_would_split_or_alter(channel, fragment):
    with pytest.raises(ChannelSpecError) as info:
        format_spec(channel)
    assert fragment in str(info.value)
    assert str(info.value).endswith(".")


_value = st.text(
    alphabet=st.characters(
        blacklist_characters=',="', blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp")
    ),
    min_size=1,
    max_size=20,
)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.dictionaries(st.sampled_from(CHANNEL_KEYS), _value))
def test_format_then_parse_is_the_identity_also_through_libxlutil(xl_oracle, channel):
    text = format_spec(channel)
    assert parse_spec(text) == channel
    assert xl_split(text) == channel
    doc = XlConfig.parse("")
    doc.set("channel", [text])
    (seen,) = libxlutil.parse(doc.render()).values["channel"]
    assert seen == text
    assert xl_split(seen) == channel


# -- names ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "org.xenchannel.provision.0",
        "org.qemu.guest_agent.0",
        "org.example.agent.12",
        "com.example.0",
        "org.xenproject.guest.clipboard.0.1",
        "io.x-y.z_w.7",
        "a.b.0",
    ],
)
def test_valid_names(name):
    assert valid_name(name)


@pytest.mark.parametrize("length", [129, 200, 255, 256, 300])
def test_names_longer_than_the_guest_links_are_refused(length):
    name = "org." + "a" * (length - 6) + ".0"
    assert len(name) == length and not valid_name(name)
    problems = validate_channel({"connection": "pty", "name": name}, ROOT)
    assert problems == [
        f"channel {_desc({'connection': 'pty', 'name': name})} has the name {name!r}, which "
        f"is {length} characters long, over the 128 a channel name may have (the guest would "
        "never link it); use a shorter name."
    ]


@pytest.mark.parametrize(
    "name",
    [
        "agent.0",  # two labels: no reverse domain
        "org.example",  # no version
        "org.example.agent",  # version must be numeric
        "org.my.cloud.software.agent.version1",  # the Xen doc's example
        "org.example.agent.v1",
        "org.example.agent.01",  # leading zero
        "Org.Example.agent.0",  # upper case
        "0rg.example.agent.0",  # first label starts with a digit
        "org..agent.0",
        "org.-x.agent.0",
        "org.x-.agent.0",
        ".org.x.0",
        "org.x.0.",
        "org.x y.0",
        "org.x.-1",
        "",
    ],
)
def test_invalid_names(name):
    assert not valid_name(name)
    problems = validate_channel({"connection": "pty", "name": name}, ROOT)
    if name:
        assert problems == [
            f"channel {_desc({'connection': 'pty', 'name': name})} has the name {name!r}, which "
            "is not a versioned reverse domain name; use two or more lower-case labels and a "
            "numeric version, e.g. org.xenchannel.provision.0."
        ]


def _desc(channel):
    return repr(", ".join(f"{k}={v}" for k, v in channel.items()))


# -- validate_channel: one sentence per violation -----------------------------------------------


def test_valid_channels_have_no_problems():
    assert validate_channel(SOCKET, ROOT) == []
    assert validate_channel(SOCKET_TEXT, ROOT) == []
    assert validate_channel("connection=pty, name=org.a.b.0", ROOT) == []
    assert validate_channel(dict(SOCKET, backend="driver-dom"), ROOT) == []
    assert (
        validate_channel(dict(SOCKET, path="/srv/x/a.sock"), ["/run/xenchannel", "/srv/x/"]) == []
    )


@pytest.mark.parametrize(
    ("spec", "sentence"),
    [
        (
            "connection=socket, path=/run/xenchannel/a.sock",
            "channel 'connection=socket, path=/run/xenchannel/a.sock' has no name; add "
            "name=<reverse domain name>.<version>, e.g. name=org.xenchannel.provision.0.",
        ),
        (
            "name=org.a.b.0, path=/run/xenchannel/a.sock",
            "channel 'name=org.a.b.0, path=/run/xenchannel/a.sock' has no connection; add "
            "connection=socket or connection=pty.",
        ),
        (
            "connection=SOCKET, name=org.a.b.0, path=/run/xenchannel/a.sock",
            "channel 'connection=SOCKET, name=org.a.b.0, path=/run/xenchannel/a.sock' has "
            "connection='SOCKET'; use connection=socket or connection=pty (lower case).",
        ),
        (
            "connection=socket, name=org.a.b.0",
            "channel 'connection=socket, name=org.a.b.0' has connection=socket but no path; "
            "add path=<socket path> inside /run/xenchannel.",
        ),
        (
            "connection=pty, name=org.a.b.0, path=/run/xenchannel/a.sock",
            "channel 'connection=pty, name=org.a.b.0, path=/run/xenchannel/a.sock' has a path, "
            "which connection=pty ignores; remove path= or use connection=socket.",
        ),
        (
            "connection=socket, name=org.a.b.0, path=run/a.sock",
            "channel 'connection=socket, name=org.a.b.0, path=run/a.sock' has the relative path "
            "'run/a.sock'; use an absolute path inside /run/xenchannel.",
        ),
        (
            "connection=socket, name=org.a.b.0, path=/run/xenchannel/../a.sock",
            "channel 'connection=socket, name=org.a.b.0, path=/run/xenchannel/../a.sock' has "
            "the path '/run/xenchannel/../a.sock', which contains '..'; give the plain absolute "
            "path inside /run/xenchannel.",
        ),
        (
            "connection=socket, name=org.a.b.0, path=/run/xenchannel/sub/../a.sock",
            "channel 'connection=socket, name=org.a.b.0, path=/run/xenchannel/sub/../a.sock' "
            "has the path '/run/xenchannel/sub/../a.sock', which contains '..'; give the plain "
            "absolute path inside /run/xenchannel.",
        ),
        (
            "connection=socket, name=org.a.b.0, path=/run/xenchannel//a.sock",
            "channel 'connection=socket, name=org.a.b.0, path=/run/xenchannel//a.sock' has the "
            "path '/run/xenchannel//a.sock', not in normal form; write it as "
            "'/run/xenchannel/a.sock'.",
        ),
        (
            "connection=socket, name=org.a.b.0, path=/run/xenchannelx/a.sock",
            "channel 'connection=socket, name=org.a.b.0, path=/run/xenchannelx/a.sock' has the "
            "path '/run/xenchannelx/a.sock', outside /run/xenchannel; put the socket inside "
            "/run/xenchannel.",
        ),
        (
            "connection=socket, name=org.a.b.0, path=/run/xenchannel",
            "channel 'connection=socket, name=org.a.b.0, path=/run/xenchannel' has the path "
            "'/run/xenchannel', outside /run/xenchannel; put the socket inside /run/xenchannel.",
        ),
        (
            "connection=socket, name=org.a.b.0, path=/run/xenchannel/" + "s" * 100,
            "channel 'connection=socket, name=org.a.b.0, path=/run/xenchannel/"
            + "s" * 100
            + "' has a path of 116 bytes, over the 107 a Unix socket path can hold; use a "
            "shorter path.",
        ),
        (
            "connection=socket, name=org.a.b.0, path=/run/xenchannel/a.sock, speed=fast",
            "channel 'connection=socket, name=org.a.b.0, path=/run/xenchannel/a.sock, "
            "speed=fast' has the unknown key 'speed', which xl would ignore; use only "
            "connection, name, path and backend.",
        ),
        (
            "connection=pty, name",
            "channel spec 'connection=pty, name' has the piece ' name' without '=', which xl "
            "refuses; write KEY=VALUE pairs separated by commas.",
        ),
    ],
)
def test_each_violation_is_one_sentence_naming_input_and_fix(spec, sentence):
    assert validate_channel(spec, ROOT) == [sentence]
    assert sentence.endswith(".") and sentence.count("; ") == 1


def test_the_xen_doc_example_breaks_the_name_and_path_rules(xl_oracle):
    problems = validate_channel(XEN_DOC, ROOT)
    assert len(problems) == 2
    assert "is not a versioned reverse domain name" in problems[0]
    assert "not in normal form; write it as '/my/cloud/software/talk/to/domain'" in problems[1]
    # Written on one line, xl itself reads it (its parser does not check names or paths)...
    text = 'channel = [ "' + XEN_DOC + '" ]\n'
    assert xl_split(libxlutil.parse(text).values["channel"][0]) == parse_spec(XEN_DOC)
    # ... and once the trailing slash is gone, the path is still outside the socket root.
    fixed = XEN_DOC.replace("domain/", "domain")
    assert "outside /run/xenchannel" in validate_channel(fixed, ROOT)[1]


def test_allowed_dirs_must_be_absolute():
    with pytest.raises(ValueError, match="must be an absolute path"):
        validate_channel(SOCKET, "run/xenchannel")


# -- lists of channels ----------------------------------------------------------------------------


def _socket(i: int) -> dict:
    return {
        "connection": "socket",
        "name": f"org.xenchannel.test{i}.0",
        "path": f"/run/xenchannel/vm-{i}.sock",
    }


def test_nine_channels_are_the_limit():
    nine = [_socket(i) for i in range(MAX_CHANNELS)]
    assert validate_channels(nine, ROOT) == []
    assert validate_channels([*nine, _socket(9)], ROOT) == [
        "10 channels are configured, but a Linux guest can use at most 9 (hvc_xen device ids "
        "1..9); remove 1."
    ]


def test_names_and_paths_are_unique():
    a, b = _socket(1), _socket(2)
    b_same_name = dict(b, name=a["name"])
    c_same_path = dict(_socket(3), path=a["path"])
    assert validate_channels([a, b_same_name, c_same_path], ROOT) == [
        f"channels 1 and 2 both have name={a['name']}; give each channel its own name.",
        f"channels 1 and 3 both have path={a['path']}; give each channel its own path.",
    ]


def test_list_problems_collect_every_channel_problem():
    problems = validate_channels(["connection=pty", "bogus", SOCKET_TEXT, SOCKET], ROOT)
    assert len(problems) == 4
    assert "has no name" in problems[0]
    assert "'bogus' without '='" in problems[1]
    assert "channels 3 and 4 both have name=org.xenchannel.provision.0" in problems[2]
    assert "channels 3 and 4 both have path=/run/xenchannel/vm1.sock" in problems[3]


def test_check_channels_returns_dicts_or_raises_with_every_problem():
    assert check_channels([SOCKET_TEXT, "connection=pty, name=org.a.b.0"], ROOT) == [
        SOCKET,
        {"connection": "pty", "name": "org.a.b.0"},
    ]
    with pytest.raises(ChannelSpecError) as info:
        check_channels(["connection=pty", "connection=pty, name=bad"], ROOT)
    assert len(info.value.problems) == 2
    assert str(info.value) == " ".join(info.value.problems)


# -- written into an xl config, read back by Xen --------------------------------------------------


def test_channels_written_into_an_xl_config_read_back_through_libxlutil(xl_means):
    channels = [SOCKET, {"connection": "pty", "name": "org.example.console.1"}] + [
        _socket(i) for i in range(2, 9)
    ]
    specs = [format_spec(c) for c in check_channels(channels, ROOT)]
    doc = XlConfig.parse("name = 'vm1'\nmemory = 512\n")
    doc.set("channel", specs, after="name")
    xl_means(doc.render(), {"name": "vm1", "memory": 512, "channel": specs})
    seen = libxlutil.parse(doc.render()).values["channel"]
    assert [xl_split(item) for item in seen] == channels
    assert [parse_spec(item) for item in seen] == channels
    assert check_channels(seen, ROOT) == channels


def test_replacing_the_libvirt_channel_reads_back_through_libxlutil(xl_means):
    doc = XlConfig.parse(f'name = "XenGuest1"\nchannel = [ "{LIBVIRT}" ]\nvcpus = 1\n')
    assert parse_spec(doc.get("channel")[0])["name"] == "org.qemu.guest_agent.0"
    assert "outside /run/xenchannel" in validate_channel(doc.get("channel")[0], ROOT)[0]
    doc.set("channel", [format_spec(SOCKET)])
    xl_means(doc.render(), {"name": "XenGuest1", "channel": [SOCKET_TEXT], "vcpus": 1})
    assert doc.render() == f'name = "XenGuest1"\nchannel = [ "{SOCKET_TEXT}" ]\nvcpus = 1\n'
