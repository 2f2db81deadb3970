"""Where and how work runs: the device, mixed precision, ``torchrun`` processes and the number
of loader processes the machine allows. Every layer may use it; it imports only the errors."""
