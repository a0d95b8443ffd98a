import Foundation

/// Line charts as standalone SVG (no dependencies): training and evaluation curves for one run, or several runs
/// compared on shared axes.
public enum SVGPlot {
    /// A named line of `(x, y)` points.
    public struct Series: Sendable {
        public var name: String
        public var points: [(x: Double, y: Double)]
        public init(name: String, points: [(x: Double, y: Double)]) { (self.name, self.points) = (name, points) }
    }

    /// A panel: a title, axis labels and its series.
    public struct Panel: Sendable {
        public var title: String, xLabel: String, yLabel: String
        public var series: [Series]
        public init(title: String, xLabel: String, yLabel: String, series: [Series]) {
            (self.title, self.xLabel, self.yLabel, self.series) = (title, xLabel, yLabel, series)
        }
    }

    static let palette = [
        "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22",
    ]

    /// Panels side by side, one legend (series matched by name share a colour).
    public static func render(_ panels: [Panel], panelWidth: Double = 460, height: Double = 320) -> String {
        let names = panels.flatMap { $0.series.map(\.name) }.reduce(into: [String]()) {
            if !$0.contains($1) { $0.append($1) }
        }
        let color = { (name: String) in palette[(names.firstIndex(of: name) ?? 0) % palette.count] }
        let legendHeight = 22.0 * Double((names.count + 3) / 4)
        let width = panelWidth * Double(max(panels.count, 1))
        var svg = """
            <svg xmlns="http://www.w3.org/2000/svg" width="\(f(width))" height="\(f(height + legendHeight))" font-family="sans-serif" font-size="12">
            <rect width="100%" height="100%" fill="white"/>

            """
        for (i, panel) in panels.enumerated() {
            svg += panelSVG(panel, x0: Double(i) * panelWidth, width: panelWidth, height: height, color: color)
        }
        for (i, name) in names.enumerated() {
            let x = 60 + Double(i % 4) * (width - 80) / 4, y = height + 14 + 22 * Double(i / 4)
            svg +=
                "<line x1=\"\(f(x))\" y1=\"\(f(y - 4))\" x2=\"\(f(x + 22))\" y2=\"\(f(y - 4))\" stroke=\"\(color(name))\" stroke-width=\"2.5\"/>"
            svg += "<text x=\"\(f(x + 28))\" y=\"\(f(y))\">\(escape(name))</text>\n"
        }
        return svg + "</svg>\n"
    }

    static func panelSVG(_ p: Panel, x0: Double, width: Double, height: Double, color: (String) -> String) -> String {
        let (left, right, top, bottom) = (x0 + 62, x0 + width - 16, 30.0, height - 44)
        let all = p.series.flatMap(\.points).filter { $0.x.isFinite && $0.y.isFinite }
        var out =
            "<text x=\"\(f((left + right) / 2))\" y=\"18\" text-anchor=\"middle\" font-size=\"14\">\(escape(p.title))</text>\n"
        guard let minX = all.map(\.x).min(), let maxX = all.map(\.x).max(), var minY = all.map(\.y).min(),
            var maxY = all.map(\.y).max()
        else {
            return out
                + "<text x=\"\(f((left + right) / 2))\" y=\"\(f(height / 2))\" text-anchor=\"middle\">no data</text>\n"
        }
        if maxY - minY < 1e-12 { minY -= 0.5; maxY += 0.5 }
        let pad = (maxY - minY) * 0.05
        (minY, maxY) = (minY - pad, maxY + pad)
        let sx = { (x: Double) in left + (maxX > minX ? (x - minX) / (maxX - minX) : 0.5) * (right - left) }
        let sy = { (y: Double) in bottom - (y - minY) / (maxY - minY) * (bottom - top) }
        out +=
            "<rect x=\"\(f(left))\" y=\"\(f(top))\" width=\"\(f(right - left))\" height=\"\(f(bottom - top))\" fill=\"none\" stroke=\"#888\"/>\n"
        for k in 0...4 {
            let y = minY + (maxY - minY) * Double(k) / 4, x = minX + (maxX - minX) * Double(k) / 4
            out += "<line x1=\"\(f(left))\" y1=\"\(f(sy(y)))\" x2=\"\(f(right))\" y2=\"\(f(sy(y)))\" stroke=\"#eee\"/>"
            out += "<text x=\"\(f(left - 6))\" y=\"\(f(sy(y) + 4))\" text-anchor=\"end\">\(tick(y))</text>"
            out += "<text x=\"\(f(sx(x)))\" y=\"\(f(bottom + 16))\" text-anchor=\"middle\">\(tick(x))</text>\n"
        }
        out +=
            "<text x=\"\(f((left + right) / 2))\" y=\"\(f(bottom + 34))\" text-anchor=\"middle\">\(escape(p.xLabel))</text>"
        out +=
            "<text transform=\"translate(\(f(x0 + 14)),\(f((top + bottom) / 2))) rotate(-90)\" text-anchor=\"middle\">\(escape(p.yLabel))</text>\n"
        for s in p.series {
            let pts = s.points.filter { $0.x.isFinite && $0.y.isFinite }
            guard !pts.isEmpty else { continue }
            let path = pts.map { "\(f(sx($0.x))),\(f(sy($0.y)))" }.joined(separator: " ")
            out += "<polyline fill=\"none\" stroke=\"\(color(s.name))\" stroke-width=\"2\" points=\"\(path)\"/>\n"
            if pts.count <= 30 {
                for q in pts {
                    out += "<circle cx=\"\(f(sx(q.x)))\" cy=\"\(f(sy(q.y)))\" r=\"2.5\" fill=\"\(color(s.name))\"/>"
                }
                out += "\n"
            }
        }
        return out
    }

    /// An exponential moving average (bias-corrected), for noisy per-step losses.
    public static func smoothed(_ values: [(x: Double, y: Double)], factor: Double = 0.9) -> [(x: Double, y: Double)] {
        var avg = 0.0, weight = 0.0
        return values.map { p in
            avg = factor * avg + (1 - factor) * p.y
            weight = factor * weight + (1 - factor)
            return (p.x, avg / weight)
        }
    }

    static func f(_ v: Double) -> String { String(format: "%.1f", v) }
    static func tick(_ v: Double) -> String { abs(v) >= 100 ? String(format: "%.0f", v) : String(format: "%.3g", v) }
    static func escape(_ s: String) -> String {
        s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;").replacingOccurrences(
            of: ">", with: "&gt;")
    }

    /// Runs compared: the training loss (smoothed) and the evaluation `metric` of each run, side by side.
    public static func runs(_ runs: [(name: String, history: [StepRecord])], metric: String) -> String {
        render([
            Panel(
                title: "training loss (smoothed)", xLabel: "update", yLabel: "loss",
                series: runs.map { r in
                    Series(name: r.name, points: smoothed(r.history.map { (Double($0.step), $0.loss) }))
                }),
            Panel(
                title: "evaluation \(metric)", xLabel: "update", yLabel: metric,
                series: runs.map { r in
                    Series(
                        name: r.name,
                        points: r.history.compactMap { h in h.metrics?[metric].map { (Double(h.step), $0) } })
                }),
        ])
    }
}
