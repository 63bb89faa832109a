"""The serial handler: sensors on serial ports (USB, ESP32/Arduino over UART) via pyserial."""
