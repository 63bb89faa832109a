"""Boot on an ESP32: join Wi-Fi with the stored credentials, or open the setup access point when
there are none or they fail; then run the probe loop under the watchdog. Anything that escapes
the loop ends in a reset, so the device never sits dead."""

from .hal.esp32 import Esp32Hal
from .master import MasterClient
from .probe import WIFI_FILE, Probe
from .sensors import make_sensor
from .store import Store
from .transport import HttpTransport

DEVICE_FILE = "device.json"  # {"id"?, "name"?, "pin"?}: set once when flashing, optional
WIFI_TIMEOUT_MS = 20000


def main() -> None:
    hal = Esp32Hal()
    store = Store(hal)
    device = store.load(DEVICE_FILE, {})
    creds = store.load(WIFI_FILE, {})
    probe_id = device.get("id") or "probe-" + hal.mac().replace(":", "")[-6:]
    joined = bool(creds.get("ssid")) and hal.connect_wifi(
        creds["ssid"], creds.get("password", ""), WIFI_TIMEOUT_MS)
    probe = Probe(hal, probe_id, sensor=make_sensor(hal, device.get("pin", 4)),
                  name=device.get("name"), hub=creds.get("hub"))
    probe.master = MasterClient(probe, HttpTransport(hal), masters=device.get("masters"),
                                sensor_type=device.get("sensor_type", "esp32_probe"),
                                hub_token=device.get("token") or "")
    if not joined:
        hal.start_access_point(probe_id + "-setup")
        probe.setup_mode = True  # only the setup page until credentials are saved
    try:
        probe.run()
    finally:
        hal.reset()
