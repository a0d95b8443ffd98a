public enum Reins {}
