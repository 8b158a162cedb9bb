"""The SMTP edge: listeners, the aiosmtpd protocol with the gateway's fixes, the handler's hooks, the DATA reader."""
