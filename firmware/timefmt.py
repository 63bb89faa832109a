"""ISO 8601 UTC timestamps from epoch seconds, without ``datetime`` (not on the device)."""


def iso_utc(epoch_s: float) -> str:
    """``2026-01-01T12:00:00.123Z``; days from 1970 by Howard Hinnant's civil-from-days."""
    ms = round(epoch_s * 1000)
    secs, millis = divmod(ms, 1000)
    days, rem = divmod(secs, 86400)
    hh, rem = divmod(rem, 3600)
    mm, ss = divmod(rem, 60)
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    y = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    if m <= 2:
        y += 1
    return "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ" % (y, m, d, hh, mm, ss, millis)
