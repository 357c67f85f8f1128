// Command promcheck independently parses a Prometheus exposition with the parser Prometheus itself
// uses: github.com/prometheus/common/expfmt (TextParser, the text format version 0.0.4).
//
// It reads the exposition on stdin. With one argument, the Content-Type header the exposition was
// served with, it first asks expfmt.ResponseFormat which format a Prometheus scraper reads it as,
// and rejects anything but the text format (the only format this checker parses).
//
// On success it prints the metric families as JSON, sorted by name:
//
//	[{"name": "...", "type": "COUNTER", "help": "...",
//	  "samples": [{"labels": {"env": "..."}, "value": "1"}, ...]}, ...]
//
// Values are strings (strconv 'g' format) so that NaN and the infinities survive JSON; a sample with
// a timestamp has "timestampMs". Counter, gauge and untyped families have one sample per metric;
// summaries and histograms are flattened to the sample lines of the text format (_sum, _count,
// _bucket with "le", quantiles with "quantile").
//
// Exit status: 0 parsed, 1 the exposition (or its Content-Type) was rejected, 2 unusable input.
//
// Build: GO111MODULE=off GOPATH=/usr/share/gocode go build -o promcheck main.go
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strconv"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
)

type sample struct {
	Name        string            `json:"name"`
	Labels      map[string]string `json:"labels"`
	Value       string            `json:"value"`
	TimestampMs *int64            `json:"timestampMs,omitempty"`
}

type family struct {
	Name    string   `json:"name"`
	Type    string   `json:"type"`
	Help    string   `json:"help"`
	Samples []sample `json:"samples"`
}

func formatFloat(v float64) string {
	return strconv.FormatFloat(v, 'g', -1, 64)
}

func labelsOf(m *dto.Metric, extra ...string) map[string]string {
	labels := map[string]string{}
	for _, pair := range m.GetLabel() {
		labels[pair.GetName()] = pair.GetValue()
	}
	for i := 0; i+1 < len(extra); i += 2 {
		labels[extra[i]] = extra[i+1]
	}
	return labels
}

func samplesOf(name string, mf *dto.MetricFamily, m *dto.Metric) []sample {
	var ts *int64
	if m.TimestampMs != nil {
		v := m.GetTimestampMs()
		ts = &v
	}
	one := func(suffix string, v float64, extra ...string) sample {
		return sample{Name: name + suffix, Labels: labelsOf(m, extra...), Value: formatFloat(v), TimestampMs: ts}
	}
	switch mf.GetType() {
	case dto.MetricType_COUNTER:
		return []sample{one("", m.GetCounter().GetValue())}
	case dto.MetricType_GAUGE:
		return []sample{one("", m.GetGauge().GetValue())}
	case dto.MetricType_UNTYPED:
		return []sample{one("", m.GetUntyped().GetValue())}
	case dto.MetricType_SUMMARY:
		s := m.GetSummary()
		out := []sample{}
		for _, q := range s.GetQuantile() {
			out = append(out, one("", q.GetValue(), "quantile", formatFloat(q.GetQuantile())))
		}
		return append(out, one("_sum", s.GetSampleSum()), one("_count", float64(s.GetSampleCount())))
	case dto.MetricType_HISTOGRAM:
		h := m.GetHistogram()
		out := []sample{}
		for _, b := range h.GetBucket() {
			out = append(out, one("_bucket", float64(b.GetCumulativeCount()), "le", formatFloat(b.GetUpperBound())))
		}
		return append(out, one("_sum", h.GetSampleSum()), one("_count", float64(h.GetSampleCount())))
	}
	return nil
}

func main() {
	if len(os.Args) > 2 {
		fmt.Fprintln(os.Stderr, "usage: promcheck [CONTENT-TYPE] < exposition")
		os.Exit(2)
	}
	if len(os.Args) == 2 {
		header := http.Header{}
		header.Set("Content-Type", os.Args[1])
		if format := expfmt.ResponseFormat(header); format != expfmt.FmtText {
			fmt.Fprintf(os.Stderr, "rejected: Content-Type %q is read as %q, not the text format %q\n",
				os.Args[1], format, expfmt.FmtText)
			os.Exit(1)
		}
	}
	body, err := io.ReadAll(os.Stdin)
	if err != nil {
		fmt.Fprintf(os.Stderr, "reading stdin: %v\n", err)
		os.Exit(2)
	}
	var parser expfmt.TextParser
	families, err := parser.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		fmt.Fprintf(os.Stderr, "rejected: %v\n", err)
		os.Exit(1)
	}
	names := make([]string, 0, len(families))
	for name := range families {
		names = append(names, name)
	}
	sort.Strings(names)
	out := make([]family, 0, len(names))
	for _, name := range names {
		mf := families[name]
		f := family{Name: mf.GetName(), Type: mf.GetType().String(), Help: mf.GetHelp(), Samples: []sample{}}
		for _, m := range mf.GetMetric() {
			f.Samples = append(f.Samples, samplesOf(name, mf, m)...)
		}
		out = append(out, f)
	}
	encoder := json.NewEncoder(os.Stdout)
	encoder.SetIndent("", "  ")
	if err := encoder.Encode(out); err != nil {
		fmt.Fprintf(os.Stderr, "writing JSON: %v\n", err)
		os.Exit(2)
	}
}
