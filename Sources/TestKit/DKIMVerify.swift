/// A Python (dkimpy) program that verifies every DKIM-Signature of each message file,
/// serving the key records from a JSON map instead of DNS.
///
/// Arguments: `keys.json` (`"selector._domainkey.domain"` → TXT text), the output path,
/// then message files. Output: a JSON list, per file, of one Bool per signature (dkimpy
/// raises on a body-hash mismatch; that counts as false). Run with Debian's /usr/bin/python3.
public let dkimVerifyScript = """
    import dkim, json, sys
    keys = json.load(open(sys.argv[1]))
    def dnsfunc(name, timeout=5):
        n = name.decode() if isinstance(name, bytes) else name
        v = keys.get(n.rstrip('.'))
        return v.encode() if v is not None else None
    out = []
    for path in sys.argv[3:]:
        d = dkim.DKIM(open(path, 'rb').read())
        count = len([h for h in d.headers if h[0].lower() == b'dkim-signature'])
        verdicts = []
        for i in range(count):
            try:
                verdicts.append(bool(d.verify(idx=i, dnsfunc=dnsfunc)))
            except dkim.DKIMException:
                verdicts.append(False)
        out.append(verdicts)
    json.dump(out, open(sys.argv[2], 'w'))
    """
