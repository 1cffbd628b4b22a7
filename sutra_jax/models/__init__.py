"""The SUTRA model: language-routed encoder and decoder blocks around a
mixture-of-experts concept core (`sutra.SutraModel`, configured by
`config.ModelConfig`)."""
